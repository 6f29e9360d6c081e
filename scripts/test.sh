#!/usr/bin/env bash
# The whole test suite: set-up, then `swift test`. Fixtures are committed; no torch needed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
swift build --build-tests -Xswiftc -warnings-as-errors
swift test --skip-build
