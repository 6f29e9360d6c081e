#!/usr/bin/env bash
# Runs every fuzz harness (fuzz/Sources/Fuzz*) under libFuzzer + AddressSanitizer.
#
#   scripts/fuzz.sh [--runs N | --seconds S] [--jobs J] [HARNESS ...]
#
# --runs N     each harness executes N inputs (CI uses a short fixed count)
# --seconds S  each harness runs for S seconds instead
# --jobs J     harnesses run J at a time (default 1)
# --seed S     libFuzzer's random seed (CI fixes it, so a CI run is repeatable)
# A crash, an ASan report, an input slower than 1 s or an allocation over 2 GB fails the run;
# libFuzzer writes the input to .build-fuzz/artifacts/HARNESS/ so it can be replayed with
#   .build-fuzz/debug/HARNESS FILE
# The corpus each harness grows lives in .build-fuzz/corpus/HARNESS (seeds: fuzz/seeds/HARNESS);
# inputs that once failed are kept in fuzz/regressions/HARNESS and replayed before fuzzing.
# A summary line per harness goes to stdout: HARNESS runs=... seconds=... exec/s=... result=ok|FAILED
set -euo pipefail
cd "$(dirname "$0")/.."
runs=""; seconds=""; jobs=1; seed=0; pick=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --jobs) jobs="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) pick+=("$1"); shift ;;
  esac
done
if [ -z "$runs" ] && [ -z "$seconds" ]; then runs=100000; fi
./scripts/setup.sh >/dev/null
scratch=.build-fuzz
# The harness objects are rebuilt every time: seen here, SwiftPM kept a harness compiled against
# an older StrataFormats layout after a stored property was added, and it crashed at once.
touch fuzz/Sources/*/*.swift
# `--sanitize` reaches the root package's targets only; `-Xswiftc -sanitize=...` instruments
# Strata's own libraries (a dependency of this package) for coverage feedback and ASan too.
(cd fuzz && swift build --scratch-path "../$scratch" --sanitize fuzzer --sanitize address -Xswiftc -sanitize=fuzzer,address \
  -Xswiftc -use-ld=lld -Xswiftc -warnings-as-errors) >&2
harnesses=("${pick[@]}")
if [ ${#harnesses[@]} -eq 0 ]; then
  for d in fuzz/Sources/Fuzz*; do n=$(basename "$d"); [ "$n" = FuzzSupport ] || harnesses+=("$n"); done
fi
mkdir -p "$scratch/logs"
run_one() {
  local h="$1" corpus="$scratch/corpus/$1" artifacts="$scratch/artifacts/$1/"
  mkdir -p "$corpus" "$artifacts"
  local limit=(-runs="${runs:-1000000000}")
  [ -n "$seconds" ] && limit=(-max_total_time="$seconds")
  local start=$SECONDS status=0
  # First the inputs that once crashed it (fuzz/regressions/HARNESS), each run once.
  if [ -d "fuzz/regressions/$h" ]; then
    if ! SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0 "$scratch/debug/$h" fuzz/regressions/"$h"/* \
        >"$scratch/logs/$h.regressions.log" 2>&1; then
      echo "$h regressions FAILED (see $scratch/logs/$h.regressions.log)"; return 1
    fi
  fi
  # detect_leaks=0: Swift's runtime keeps metadata caches that LeakSanitizer reports as leaks.
  # SWIFT_BACKTRACE=enable=no: the runtime's backtracer reads memory ASan reports as a second error.
  SWIFT_BACKTRACE=enable=no ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 "$scratch/debug/$h" "${limit[@]}" -seed="$seed" -timeout=1 -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts" "$corpus" "fuzz/seeds/$h" \
    >"$scratch/logs/$h.log" 2>&1 || status=$?
  local done_runs rate
  local cov units
  cov=$(grep -a -o 'cov: [0-9]*' "$scratch/logs/$h.log" | tail -1 | grep -o '[0-9]*$' || echo 0)
  units=$(ls "$corpus" | wc -l)
  done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/logs/$h.log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$scratch/logs/$h.log" | grep -o '[0-9]*$' || echo 0)
  if [ $status -eq 0 ]; then result=ok; else result=FAILED; fi
  echo "$h runs=$done_runs seconds=$((SECONDS - start)) exec/s=$rate coverage=$cov corpus=$units result=$result"
  if [ $status -ne 0 ]; then grep -E 'ERROR|Fatal error|SUMMARY|Test unit written|ALARM|out-of-memory' "$scratch/logs/$h.log" | head -8 >&2; return 1; fi
}
failed=0
active=0
for h in "${harnesses[@]}"; do
  run_one "$h" &
  active=$((active + 1))
  if [ $active -ge "$jobs" ]; then wait -n || failed=1; active=$((active - 1)); fi
done
while [ $active -gt 0 ]; do wait -n || failed=1; active=$((active - 1)); done
exit $failed
