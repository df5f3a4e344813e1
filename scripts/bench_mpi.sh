#!/usr/bin/env bash
# Strong scaling across MPI ranks on this machine: the binned-moments pass (one filtered-PCA
# round's pass) with 2 ranks x 1 thread against 1 process x 1 thread, measured back to back, and
# one process with 2 threads as the shared-memory reference; the bytes combined per pass at N/10
# and N (they must not grow with N); an end-to-end `subspace` run with 1 and 2 ranks.
# Usage: scripts/bench_mpi.sh [N] [D] [REPEATS]   (defaults 2000000 128 3)
# Needs Open MPI (openmpi-bin libopenmpi-dev libclang-dev) and builds with --features mpi.
# Prints one JSON line per measurement, the load average before each, and Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000000}; d=${2:-128}; reps=${3:-3}
bin=${CARGO_TARGET_DIR:-target}/release/relu-fpt
cargo build --release --quiet --features mpi
two_ranks=(mpirun --allow-run-as-root --bind-to core -n 2 -x RAYON_NUM_THREADS=1)
tmp=$(mktemp); out=$(mktemp -d); trap 'rm -rf "$tmp" "$out"' EXIT
load() { cut -d' ' -f1 /proc/loadavg; }
measure() { # tag, command...
  local tag=$1; shift
  local before; before=$(load)
  "$@" | tail -n 1 | sed "s/^/$tag $before /" | tee -a "$tmp" | cut -c1-240
}
for _ in $(seq "$reps"); do
  for k in 1 64; do
    bench=(bench moments --n "$n" --d "$d" --bins "$k" --backend cpu --runs 5 --json)
    measure "one_rank_1t_k$k" env RAYON_NUM_THREADS=1 "$bin" "${bench[@]}"
    measure "two_ranks_k$k" "${two_ranks[@]}" "$bin" "${bench[@]}"
    measure "one_rank_2t_k$k" env RAYON_NUM_THREADS=2 "$bin" "${bench[@]}"
  done
done
for k in 1 64; do
  measure "comm_small_k$k" "${two_ranks[@]}" "$bin" bench moments --n $((n / 10)) --d "$d" \
    --bins "$k" --backend cpu --runs 5 --json
done
sub=(subspace --teacher random --d "$d" --n "$n" --refine-steps 1 --backend cpu --json --out "$out/subspace.json")
measure "subspace_one_rank" env RAYON_NUM_THREADS=1 "$bin" "${sub[@]}"
measure "subspace_two_ranks" "${two_ranks[@]}" "$bin" "${sub[@]}"
python3 - "$tmp" "$n" "$d" <<'PY'
import json, statistics, sys, platform, os
runs, loads, last = {}, {}, {}
for line in open(sys.argv[1]):
    tag, load, js = line.split(" ", 2)
    v = json.loads(js)
    runs.setdefault(tag, []).append(v["seconds"])
    loads.setdefault(tag, []).append(float(load))
    last[tag] = v
med = {k: statistics.median(v) for k, v in runs.items()}
n, d = int(sys.argv[2]), int(sys.argv[3])
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
allloads = [x for v in loads.values() for x in v]
print(f"\nmachine: {cpu}, {os.cpu_count()} hardware threads; N = {n}, d = {d}; "
      f"medians of {len(runs['two_ranks_k1'])} runs (each the median of 5 passes); "
      f"1-minute load average before the runs {min(allloads):.1f} to {max(allloads):.1f}")
print("\n| moments pass | 1 rank x 1 thread (s) | 2 ranks x 1 thread (s) | speedup | efficiency | 1 rank x 2 threads (s) |")
print("|---|---|---|---|---|---|")
for k in (1, 64):
    a, b, c = med[f"one_rank_1t_k{k}"], med[f"two_ranks_k{k}"], med[f"one_rank_2t_k{k}"]
    print(f"| K = {k} | {a:.3f} | {b:.3f} | {a/b:.2f} | {a/(2*b):.0%} | {c:.3f} |")
print("\n| K | bytes combined per pass at N/10 | at N |")
print("|---|---|---|")
for k in (1, 64):
    per = lambda v: v["communication"]["combined_bytes"] / v["communication"]["combines"]
    print(f"| {k} | {per(last[f'comm_small_k{k}']):.0f} | {per(last[f'two_ranks_k{k}']):.0f} |")
a, b = med["subspace_one_rank"], med["subspace_two_ranks"]
s = last["subspace_two_ranks"]
print(f"\nsubspace end to end (random teacher, d = {d}, N = {n}, data drawn inside the passes): "
      f"1 rank x 1 thread {a:.1f} s, 2 ranks x 1 thread {b:.1f} s, speedup {a/b:.2f}; "
      f"{s['communication']['combines']} combinations, {s['communication']['combined_bytes']} bytes in all")
PY
