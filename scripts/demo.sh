#!/usr/bin/env bash
# The main job on the bundled model: set-up, release build, then a batch of prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
swift build -c release --product strata
MODEL=fixtures/models/opt-licenses
OUT=${OUT:-/tmp/strata-demo-output.jsonl}
.build/release/strata generate --model "$MODEL" --prompt "The GNU General Public License is" --max-new-tokens 24
.build/release/strata generate --model "$MODEL" --input examples/prompts.jsonl --output "$OUT" \
  --overwrite --batch-size 4 --max-new-tokens 24
echo "batch outputs: $OUT"
