#!/usr/bin/env bash
# Strong scaling across MPI ranks on this machine: the binned-moments pass (one filtered-PCA
# round's pass) with 2 ranks x 1 thread against 1 process x 1 thread, measured back to back, and
# one process with 2 threads as the shared-memory reference; the bytes combined per pass at N/10
# and N (they must not grow with N); `subspace` (samples drawn inside the passes) and `learn`
# (on LEARN_N rows of .npy files written by `generate` into a temporary directory) end to end,
# 1 and 2 ranks.
# Usage: scripts/bench_mpi.sh [N] [D] [REPEATS] [LEARN_N]   (defaults 2000000 128 3 200000)
# Needs Open MPI (openmpi-bin libopenmpi-dev libclang-dev) and builds with --features mpi.
# Prints one JSON line per measurement, the load average before each, and Markdown tables: wall
# time and, for the moments pass, rank 0's CPU time (the work per rank, which a busy machine's
# share of the cores does not change).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000000}; d=${2:-128}; reps=${3:-3}; learn_n=${4:-200000}
bin=${CARGO_TARGET_DIR:-target}/release/relu-fpt
cargo build --release --quiet --features mpi
two_ranks=(mpirun --allow-run-as-root --bind-to core -n 2 -x RAYON_NUM_THREADS=1)
tmp=$(mktemp); out=$(mktemp -d)
# BENCH_MPI_RAW=path keeps the JSON lines (tag, load average, JSON) for a later look.
trap '[ -n "${BENCH_MPI_RAW:-}" ] && cp "$tmp" "$BENCH_MPI_RAW"; rm -rf "$tmp" "$out"' EXIT
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
"$bin" generate --teacher random --d "$d" --n "$learn_n" --seed 2 --out "$out" >/dev/null
lrn=(learn --x "$out/x.npy" --y "$out/y.npy" --backend cpu --json --out "$out/model.json")
measure "learn_one_rank" env RAYON_NUM_THREADS=1 "$bin" "${lrn[@]}"
measure "learn_two_ranks" "${two_ranks[@]}" "$bin" "${lrn[@]}"
# The same process with only the moments kernel's f32 additions reordered (portable instead of
# the widest SIMD): how far a change in the order of additions alone moves the learned model.
measure "learn_one_rank_portable" env RAYON_NUM_THREADS=1 RELU_FPT_CPU_KERNEL=portable "$bin" "${lrn[@]}"
python3 - "$tmp" "$n" "$d" "$learn_n" <<'PY'
import json, statistics, sys, platform, os
runs, loads, last, cpus = {}, {}, {}, {}
for line in open(sys.argv[1]):
    tag, load, js = line.split(" ", 2)
    v = json.loads(js)
    if v.get("cpu_seconds") is not None:  # bench moments: CPU time of rank 0 for the pass
        cpus.setdefault(tag, []).append(v["cpu_seconds"])
    seconds = v.get("seconds")
    if seconds is None:  # learn: the sum of its stages
        seconds = sum(st["seconds"] for st in v["stages"])
    runs.setdefault(tag, []).append(seconds)
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
# CPU time of the pass in rank 0 (all its threads, MPI's waiting included): the work each rank
# does, which a busy machine's share of the cores does not change.
cmed = {k: statistics.median(v) for k, v in cpus.items()}
print("\n| moments pass, CPU time | 1 rank x 1 thread (s) | 2 ranks x 1 thread, per rank (s) | ratio | efficiency | 1 rank x 2 threads, both (s) |")
print("|---|---|---|---|---|---|")
for k in (1, 64):
    a, b, c = cmed[f"one_rank_1t_k{k}"], cmed[f"two_ranks_k{k}"], cmed[f"one_rank_2t_k{k}"]
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
one, two = last["learn_one_rank"], last["learn_two_ranks"]
print(f"\nlearn end to end (random teacher, d = {d}, N = {sys.argv[4]}, .npy files), seconds per stage:")
print("| stage | 1 rank x 1 thread | 2 ranks x 1 thread | speedup |")
print("|---|---|---|---|")
for a, b in zip(one["stages"], two["stages"]):
    print(f"| {a['stage']} | {a['seconds']:.2f} | {b['seconds']:.2f} | {a['seconds']/b['seconds']:.2f} |")
ta, tb = med["learn_one_rank"], med["learn_two_ranks"]
c = two["communication"]
print(f"| all | {ta:.2f} | {tb:.2f} | {ta/tb:.2f} |")
port = last["learn_one_rank_portable"]
rel = lambda v: abs(v["validation_mse"] - one["validation_mse"]) / one["validation_mse"]
print(f"validation MSE: 1 rank {one['validation_mse']:.5e}; 2 ranks {two['validation_mse']:.5e} "
      f"(relative difference {rel(two):.1e}); 1 rank with the portable moments kernel "
      f"{port['validation_mse']:.5e} ({rel(port):.1e}); 2 ranks: {c['combines']} combinations, "
      f"{c['combined_bytes']} bytes")
PY
