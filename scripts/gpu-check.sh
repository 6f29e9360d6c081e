#!/usr/bin/env bash
# The one GPU check (issue 12), prepared to run unchanged on the first NVIDIA machine that
# appears: no Swift, apt or pip there. Build here first (scripts/build-portable.sh), carry
# dist/strata-portable.tar.xz, and run from the repository root:
#
#   scripts/gpu-check.sh              # on the GPU machine: prints one summary table
#   scripts/gpu-check.sh --cpu        # here: the same steps on the CPU with small models (plumbing)
#
# Steps (each under its own time limit; a failed or skipped step is a row, not an abort):
#   1. check-backend: every backend op on CUDA against the CPU backend (f16 and f32 compute)
#   2. check-fixtures: the fixture models' logits and greedy tokens (f32: 1e-4, identical tokens;
#      f16: 2% of the largest logit, transformers' own fp16 being 0.26% off on opt-tiny)
#   3. bench-transfer: page-locked host-to-device bandwidth
#   4. OPT-6.7B (random weights made there): all on the GPU; FlexGen's T4 setting under a 16 GiB
#      device budget; 4-bit weights and cache; weights on the host (transfer-bound, vs its bound)
#   5. OPT-30B under 16 GiB with FlexGen's T4 policy (20 80 0 100 0 100, 48 x 3, CPU attention),
#      and with 4-bit weights and cache (when the disk has room for its 56 GiB store)
# Results: $OUT (or /tmp/strata-gpu-check) holds summary.md, results.jsonl and each step's log.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=gpu
[ "${1:-}" = "--cpu" ] && mode=cpu
out=${OUT:-/tmp/strata-gpu-check}
mkdir -p "$out"
: > "$out/results.jsonl"
start=$(date +%s)
budget=${STRATA_CHECK_SECONDS:-450}   # the whole check stays under 8 minutes
models=${STRATA_CHECK_MODELS:-/tmp/strata-models}
mkdir -p "$models"

# The binary: STRATA_BIN, else the portable archive when carried, else a local build.
bin=${STRATA_BIN:-}
if [ -n "$bin" ]; then :
elif [ -f dist/strata-portable.tar.xz ]; then
  mkdir -p /tmp/strata-portable
  if ! tar -C /tmp/strata-portable -xJf dist/strata-portable.tar.xz 2>/dev/null; then
    python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" dist/strata-portable.tar.xz /tmp/strata-portable
  fi
  bin=/tmp/strata-portable/strata
elif [ -x .build/release/strata ]; then bin=.build/release/strata
elif [ -x .build/debug/strata ]; then bin=.build/debug/strata
else echo "gpu-check: no strata binary (run scripts/build-portable.sh and carry dist/)" >&2; exit 2; fi

if [ "$mode" = gpu ]; then
  # cuBLAS and NVRTC: CUDA's own folders and pip's nvidia-* wheels (torch's image has both).
  dirs=""
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
    [ -d "$d" ] && dirs="$dirs:$d"
  done
  for site in $(python3 -c "import site,sys; print(' '.join(site.getsitepackages() + [site.getusersitepackages()]))" 2>/dev/null); do
    [ -d "$site/nvidia" ] || continue
    for f in $(find "$site/nvidia" -name 'libcublas.so*' -o -name 'libnvrtc.so*' 2>/dev/null); do dirs="$dirs:$(dirname "$f")"; done
  done
  dirs=$(echo "$dirs" | tr ':' '\n' | awk 'NF && !seen[$0]++' | paste -sd: -)
  export STRATA_CUDA_LIB_DIRS="$dirs"
  # NVRTC opens its builtins library by name: the wheel folders go on the loader path (not the
  # system folders, which must not shadow the carried lib/ of the portable binary).
  export LD_LIBRARY_PATH="$(echo "$dirs" | tr : "\n" | grep -v -e "^/usr/lib" -e "^/lib" | paste -sd: -)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  nvrtc=$(echo "$dirs" | tr ':' '\n' | while read -r d; do ls "$d"/libnvrtc.so* >/dev/null 2>&1 && echo "$d" && break; done)
  [ -n "$nvrtc" ] && export STRATA_NVRTC_DIR="$nvrtc"
  export STRATA_KERNEL_CACHE="$out/kernels"
  nvidia-smi -L 2>&1 | tee "$out/nvidia-smi.txt"
  backend=(--backend cuda)
  threads=$(nproc)
else
  backend=(--backend cpu)
  threads=2
fi

# run NAME SECONDS CMD...: runs a step with a limit unless the check's time is spent; its
# stdout (JSON) goes to NAME.json, stderr to NAME.log; appends {"step","status","seconds"}.
run() {
  local name=$1 limit=$2; shift 2
  local now=$(date +%s)
  local left=$((budget - (now - start)))
  if [ "$left" -lt 20 ]; then
    echo "{\"step\":\"$name\",\"status\":\"skipped: the check's time is spent\"}" >> "$out/results.jsonl"; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)" >&2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.json" 2> "$out/$name.log"
  local rc=$?
  local status=ok
  [ $rc -eq 124 ] && status="timed out after ${limit}s"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc): $(tail -1 "$out/$name.log" | tr -d '"\\')"
  echo "{\"step\":\"$name\",\"status\":\"$status\",\"seconds\":$(( $(date +%s) - t0 ))}" >> "$out/results.jsonl"
}

skip() { echo "{\"step\":\"$1\",\"status\":\"skipped: $2\"}" >> "$out/results.jsonl"; }

# 1-3: correctness and bandwidth.
if [ "$mode" = gpu ]; then
  run ops-f16 60 "$bin" check-backend "${backend[@]}" --compute-precision f16 --json
  run ops-f32 60 "$bin" check-backend "${backend[@]}" --compute-precision f32 --json
  run fixtures-f32 90 "$bin" check-fixtures "${backend[@]}" --compute-precision f32 --json
  run fixtures-f16 90 "$bin" check-fixtures "${backend[@]}" --compute-precision f16 --json
  run transfer 60 "$bin" bench-transfer "${backend[@]}" --bytes 1GiB --json
else
  run ops-cpu 60 "$bin" check-backend "${backend[@]}" --json
  run fixtures-cpu 90 "$bin" check-fixtures "${backend[@]}" --json
  run transfer 60 "$bin" bench-transfer "${backend[@]}" --bytes 256MiB --json
fi

# 4-5: FlexGen's benchmark shapes. On the CPU the same commands on OPT-125m, short.
if [ "$mode" = gpu ]; then
  small=opt-6.7b; large=opt-30b; prompt=512; gen=32; budget16=(--device-mem 16GiB)
else
  small=opt-125m; large=opt-125m; prompt=32; gen=4; budget16=(--device-mem 2GiB)
fi
bench() { run "$1" "$2" "$bin" bench --model "$models/$3" "${backend[@]}" --threads "$threads" --prompt-len "$prompt" --gen-len "$gen" --json "${@:4}"; }

run "make-$small" 120 "$bin" convert --random "$small" --out "$models/$small" --quiet
bench "$small-gpu-only-b32" 120 "$small" --batch-size 32
bench "$small-t4-policy-b2" 90 "$small" --batch-size 2 "${budget16[@]}" --percent 100 0 100 0 100 0 --gpu-batch-size 2
bench "$small-4bit-b72" 120 "$small" --batch-size 72 "${budget16[@]}" --percent 100 0 100 0 100 0 --gpu-batch-size 72 --compress-weight --compress-cache
bench "$small-weights-on-host-b32" 120 "$small" --batch-size 32 --percent 0 100 100 0 100 0 --gpu-batch-size 32 --measure-transfer

free_gib=$(df -Pk "$models" | awk 'NR==2 { print int($4 / 1048576) }')
free_gib=${free_gib:-0}
if [ "$mode" = cpu ] || [ "$free_gib" -ge 62 ]; then
  [ "$large" != "$small" ] && run "make-$large" 200 "$bin" convert --random "$large" --out "$models/$large" --quiet
  if [ "$mode" = gpu ]; then large_batch=(--batch-size 144 --gpu-batch-size 48 --num-gpu-batches 3); else large_batch=(--batch-size 6 --gpu-batch-size 2 --num-gpu-batches 3); fi
  bench "$large-t4-policy" 240 "$large" "${large_batch[@]}" "${budget16[@]}" --percent 20 80 0 100 0 100 --cpu-attention --measure-transfer
  bench "$large-t4-policy-4bit" 200 "$large" "${large_batch[@]}" "${budget16[@]}" --percent 20 80 0 100 0 100 --cpu-attention --compress-weight --compress-cache --measure-transfer
else
  skip "$large-t4-policy" "${free_gib} GiB free under $models; the f16 store needs 56 GiB"
fi

python3 - "$out" "$mode" <<'PY' | tee "$out/summary.md"
import json, os, sys
out, mode = sys.argv[1], sys.argv[2]
def load(name):
    try:
        with open(os.path.join(out, name + ".json")) as f: return json.loads(f.read().strip().splitlines()[-1])
    except Exception: return None
rows = []
for line in open(os.path.join(out, "results.jsonl")):
    r = json.loads(line); name = r["step"]; j = load(name) if r["status"] == "ok" else None; detail = ""
    if j and "results" in j and "ops" in j:
        worst = max(j["results"], key=lambda x: x["error"] / max(x["tolerance"], 1e-30))
        detail = f"{int(j['ops'] - j['failed'])}/{int(j['ops'])} ops within tolerance; worst {worst['op']}: {worst['error']:.2e} (tol {worst['tolerance']:.0e})"
        if j["failed"]: r["status"] = "FAILED"
    elif j and "models" in j:
        detail = "; ".join(f"{m['model']}: {m['max_logit_error']:.1e} (tol {m['tolerance']:.0e}){'' if m['batched_tokens_match'] and m['single_tokens_match'] else ' tokens differ'}" for m in j["models"])
        if not j.get("tokens_required", True): detail += "; 16-bit: tokens reported, not required"
        if j["failed"]: r["status"] = "FAILED"
    elif j and "host_to_device_bytes_per_s" in j:
        detail = f"host to device {j['host_to_device_bytes_per_s']/1e9:.1f} GB/s, device to host {j['device_to_host_bytes_per_s']/1e9:.1f} GB/s"
    elif j and "total_tokens_per_s" in j:
        detail = f"{j.get('backend','?')}: prefill {j['prefill_tokens_per_s']:.0f}, decode {j['decode_tokens_per_s']:.1f}, total {j['total_tokens_per_s']:.2f} tok/s"
        t = j.get("tiers", {}).get("device")
        if t: detail += f"; device peak {t['peak_bytes']/2**30:.2f} GiB" + (f" of {t['budget_bytes']/2**30:.0f}" if t.get("budget_bytes") else "")
        b = j.get("transfer_bound")
        if b: detail += f"; step {b['decode_seconds_per_step']:.3f} s vs weight-transfer bound {b['bound_seconds_per_step']:.3f} s ({100*b['fraction_of_bound']:.0f}%)"
    rows.append((name, r["status"], r.get("seconds", ""), detail))
print(f"| step ({mode}) | status | s | result |\n|---|---|---|---|")
for name, status, secs, detail in rows: print(f"| {name} | {status} | {secs} | {detail} |")
bad = [n for n, s, _, _ in rows if s not in ("ok",) and not s.startswith("skipped")]
print(f"\n{len(rows) - len(bad)} of {len(rows)} steps ok or skipped" + (f"; not ok: {', '.join(bad)}" if bad else ""))
sys.exit(1 if bad else 0)
PY
