#!/usr/bin/env bash
# One-shot hardware check of the GPU backend, meant to finish in under 8 minutes on a GPU
# machine:
#   1. the test suite on the hardware adapter (`cargo test --release`);
#   2. `relu-fpt bench moments` at N = 1e7, d in {128, 512, 1024}, K in {1, 64} on the GPU
#      (the device generates the samples and keeps them resident, so the passes read device
#      memory; see `relu-fpt bench moments --help`);
#   3. `relu-fpt learn` end to end at N = 1e7, d = 512 (parity teacher, k = 4) on the GPU and on
#      the CPU backend of the same machine, each with its stage table;
#   4. a sweep of the moments kernel's SYRK tile at N = 2e6, d = 1024, K = 1
#      (RELU_FPT_GPU_MOMENT_TILE = "workgroup side, outputs per invocation, samples per slab");
# and writes every figure to one JSON report.
#
#   scripts/gpu_check.sh [--small] [--out FILE] [--skip-tests]
#
# --small (or GPU_CHECK_SMALL=1) shrinks every size so the script runs in minutes on a
# software adapter such as lavapipe, which is how it is checked where no GPU is lent (it then
# runs only the GPU test binaries and learn with few epochs; its figures say nothing about
# speed).
# Environment: RELU_FPT_BIN=path skips the build and uses that binary (the test step then
# still needs cargo); GPU_CHECK_PROFILE=dev builds the debug profile instead of release (for a
# quick check of the script itself: its timings mean nothing); GPU_CHECK_DEADLINE=seconds (default 450) bounds the whole run: each step
# gets what is left, a step that fails or runs out of time is recorded as such and the next one
# runs. RELU_FPT_GPU_RESIDENT_MIB (default 100000 here) lets the device keep the samples.
set -uo pipefail

cd "$(dirname "$0")/.."
small=${GPU_CHECK_SMALL:-0}
out=gpu_check.json
skip_tests=0
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --out) out="$2"; shift ;;
    --skip-tests) skip_tests=1 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

start=$(date +%s)
deadline=$((start + ${GPU_CHECK_DEADLINE:-450}))
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RELU_FPT_GPU_RESIDENT_MIB=${RELU_FPT_GPU_RESIDENT_MIB:-100000}
export RUST_LOG=${RUST_LOG:-warn}

tiles="16,8,8 16,8,16 8,8,16 16,4,16 8,4,16"
if [ "$small" = 1 ]; then
  bench_n=20000; bench_dims="16 32 48"; bench_bins="1 64"
  learn_n=20000; learn_d=16; learn_extra=(--descent-epochs 3 --polish-epochs 2)
  sweep_n=10000; sweep_d=64
  test_args=(--test gpu --test sampling --test moment_tiles --test gpu_review)
else
  bench_n=10000000; bench_dims="128 512 1024"; bench_bins="1 64"
  learn_n=10000000; learn_d=512; learn_extra=()
  sweep_n=2000000; sweep_d=1024
  test_args=()
fi

# Seconds left before the deadline, keeping `reserve` for the steps after this one.
left() { local reserve=$1; local now; now=$(date +%s); echo $((deadline - now - reserve)); }
# A JSON string (control characters other than tab and newline dropped).
js() {
  local s
  s=$(printf '%s' "$1" | tr -d '\000-\010\013-\037')
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\t'/ }
  s=${s//$'\n'/\\n}
  printf '"%s"' "$s"
}
# Runs "$@" for at most $1 seconds with stdout to $2 and stderr to $3; prints the exit status
# (124: out of time).
timed() {
  local limit=$1 out=$2 err=$3; shift 3
  if [ "$limit" -le 0 ]; then echo "no time left" >"$err"; echo 124; return; fi
  if [ "$out" = "$err" ]; then
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>&1; echo $?
  else
    timeout --kill-after=10 "$limit" "$@" >"$out" 2>"$err"; echo $?
  fi
}

# 0. Build (release: the timings need it; tests build in the same profile, sharing the deps).
profile=${GPU_CHECK_PROFILE:-release}
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
build_status=0
build_start=$(date +%s)
if [ -z "${RELU_FPT_BIN:-}" ]; then
  if [ "$skip_tests" = 1 ]; then
    cargo build --profile "$profile" --locked >"$work/build.log" 2>&1 || build_status=$?
  else
    cargo test --profile "$profile" --locked --no-run >"$work/build.log" 2>&1 || build_status=$?
  fi
  bin=${CARGO_TARGET_DIR:-target}/$profile_dir/relu-fpt
else
  bin=$RELU_FPT_BIN
fi
build_seconds=$(( $(date +%s) - build_start ))
if [ "$build_status" != 0 ] || [ ! -x "$bin" ]; then
  tail -20 "$work/build.log" >&2
  echo "gpu_check.sh: the build failed; nothing was measured" >&2
  printf '{"format":"relu-fpt/gpu-check","version":1,"build":{"status":%s,"seconds":%s,"log_tail":%s}}\n' \
    "$build_status" "$build_seconds" "$(js "$(tail -20 "$work/build.log")")" >"$out"
  exit 1
fi

devices=$("$bin" devices 2>&1 | head -20)
cpu_model=$(grep -m1 "model name" /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')
cores=$(nproc 2>/dev/null || echo 0)

# 1. The test suite on the adapter wgpu picks (a hardware one when present).
tests_json='{"skipped":true}'
if [ "$skip_tests" != 1 ]; then
  limit=$(left 240); [ "$limit" -gt 240 ] && limit=240
  t0=$(date +%s)
  status=$(timed "$limit" "$work/tests.log" "$work/tests.log" \
    cargo test --profile "$profile" --locked "${test_args[@]}" -- --test-threads=4)
  count() { grep -E '^test result' "$work/tests.log" | sed -E "s/.* ([0-9]+) $1.*/\1/" | awk '{s+=$1} END{print s+0}'; }
  passed=$(count passed)
  failed=$(count failed)
  failures=$(grep -E '^test .* FAILED$' "$work/tests.log" | head -40)
  tests_json=$(printf '{"status":%s,"timed_out":%s,"passed":%s,"failed":%s,"seconds":%s,"failures":%s}' \
    "$status" "$([ "$status" = 124 ] && echo true || echo false)" "${passed:-0}" "${failed:-0}" \
    "$(( $(date +%s) - t0 ))" "$(js "$failures")")
  echo "tests: status $status, ${passed:-0} passed, ${failed:-0} failed" >&2
fi

# 2. Moments on the GPU.
bench_lines=()
for d in $bench_dims; do
  for k in $bench_bins; do
    limit=$(left 200); [ "$limit" -gt 60 ] && limit=60
    status=$(timed "$limit" "$work/bench.out" "$work/bench.err" \
      "$bin" bench moments --backend gpu --n "$bench_n" --d "$d" --bins "$k" --runs 5 --json)
    if [ "$status" = 0 ] && [ -s "$work/bench.out" ]; then
      bench_lines+=("$(tail -1 "$work/bench.out")")
      echo "bench d = $d, K = $k: $(tail -1 "$work/bench.out")" >&2
    else
      bench_lines+=("$(printf '{"d":%s,"bins":%s,"n":%s,"status":%s,"error":%s}' "$d" "$k" "$bench_n" \
        "$status" "$(js "$(tail -3 "$work/bench.err")")")")
      echo "bench d = $d, K = $k: status $status" >&2
    fi
  done
done

# 3. learn end to end, GPU then CPU backend.
learn_run() {
  local backend=$1 cap=$2 reserve=$3
  local limit; limit=$(left "$reserve"); [ "$limit" -gt "$cap" ] && limit=$cap
  local t0; t0=$(date +%s)
  local status
  status=$(timed "$limit" "$work/learn-$backend.out" "$work/learn-$backend.err" \
    "$bin" learn --teacher parity --k 4 --d "$learn_d" --n "$learn_n" --backend "$backend" \
    --seed 1 --json --out "$work/model-$backend.json" "${learn_extra[@]}")
  local seconds=$(( $(date +%s) - t0 ))
  if [ "$status" = 0 ] && [ -s "$work/learn-$backend.out" ]; then
    printf '{"backend":"%s","status":0,"wall_seconds":%s,"report":%s}' "$backend" "$seconds" \
      "$(tail -1 "$work/learn-$backend.out")"
  else
    printf '{"backend":"%s","status":%s,"timed_out":%s,"wall_seconds":%s,"error":%s}' "$backend" \
      "$status" "$([ "$status" = 124 ] && echo true || echo false)" "$seconds" \
      "$(js "$(tail -3 "$work/learn-$backend.err")")"
  fi
  echo "learn ($backend): status $status in $seconds s" >&2
}
learn_gpu=$(learn_run gpu 100 130)
learn_cpu=$(learn_run cpu 150 40)

# 4. The SYRK tile sweep (what is left of the time, at most 40 s).
sweep_lines=()
for t in $tiles; do
  limit=$(left 0); [ "$limit" -gt 15 ] && limit=15
  status=$(RELU_FPT_GPU_MOMENT_TILE=$t timed "$limit" "$work/sweep.out" "$work/sweep.err" \
    "$bin" bench moments --backend gpu --n "$sweep_n" --d "$sweep_d" --bins 1 --runs 5 --json)
  if [ "$status" = 0 ] && [ -s "$work/sweep.out" ]; then
    sweep_lines+=("$(printf '{"tile":"%s","result":%s}' "$t" "$(tail -1 "$work/sweep.out")")")
  else
    sweep_lines+=("$(printf '{"tile":"%s","status":%s,"error":%s}' "$t" "$status" \
      "$(js "$(tail -3 "$work/sweep.err")")")")
  fi
  echo "tile $t: status $status" >&2
done

# Wall seconds of each learn, and their ratio (CPU / GPU; a lower bound when the CPU run was
# cut off by its time limit).
secs() { printf '%s' "$1" | sed -nE 's/.*"wall_seconds":([0-9]+).*/\1/p'; }
gs=$(secs "$learn_gpu"); cs=$(secs "$learn_cpu")
speedup=null
if [ -n "$gs" ] && [ -n "$cs" ] && [ "$gs" -gt 0 ]; then
  speedup=$(awk -v c="$cs" -v g="$gs" 'BEGIN{printf "%.2f", c / g}')
fi

{
  printf '{"format":"relu-fpt/gpu-check","version":1,"small":%s,' "$([ "$small" = 1 ] && echo true || echo false)"
  printf '"started":"%s","total_seconds":%s,' "$(date -u -d "@$start" +%FT%TZ)" "$(( $(date +%s) - start ))"
  printf '"machine":{"cpu":%s,"cores":%s,"devices":%s},' "$(js "$cpu_model")" "$cores" "$(js "$devices")"
  printf '"build":{"status":0,"profile":"%s","seconds":%s},' "$profile" "$build_seconds"
  printf '"tests":%s,' "$tests_json"
  printf '"bench_moments":[%s],' "$(IFS=,; echo "${bench_lines[*]}")"
  printf '"learn":{"n":%s,"d":%s,"gpu":%s,"cpu":%s,"cpu_over_gpu_wall":%s},' \
    "$learn_n" "$learn_d" "$learn_gpu" "$learn_cpu" "$speedup"
  printf '"tile_sweep":{"n":%s,"d":%s,"runs":[%s]}}\n' "$sweep_n" "$sweep_d" \
    "$(IFS=,; echo "${sweep_lines[*]}")"
} >"$out"
echo "wrote $out ($(( $(date +%s) - start )) s)" >&2
