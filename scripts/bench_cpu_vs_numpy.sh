#!/usr/bin/env bash
# CPU moments against numpy's X^T X, measured back to back in one run (issue: compute backends).
# Usage: scripts/bench_cpu_vs_numpy.sh [N] [D] [REPEATS]   (defaults 1000000 128 3)
# Prints one JSON line per measurement and a Markdown table of medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}; d=${2:-128}; reps=${3:-3}
bin=${CARGO_TARGET_DIR:-target}/release/relu-fpt
cargo build --release --quiet
peer=/work/shared/peers/np_moment.py
[ -f "$peer" ] || peer=../shared/peers/np_moment.py
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
for _ in $(seq "$reps"); do
  # numpy: unset the OpenBLAS workarounds in its command only (see shared/peers/README.md).
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python3 "$peer" "$n" "$d" | sed 's/^/numpy /' | tee -a "$tmp"
  "$bin" bench moments --n "$n" --d "$d" --bins 1 --backend cpu --json | sed 's/^/k1 /' | tee -a "$tmp"
  "$bin" bench moments --n "$n" --d "$d" --bins 64 --backend cpu --json | sed 's/^/k64 /' | tee -a "$tmp"
done
python3 - "$tmp" "$n" "$d" <<'PY'
import json, statistics, sys, platform, os
rows = {}
for line in open(sys.argv[1]):
    tag, js = line.split(" ", 1)
    rows.setdefault(tag, []).append(json.loads(js)["seconds"])
med = {k: statistics.median(v) for k, v in rows.items()}
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"\nmachine: {cpu}, {os.cpu_count()} threads; N = {sys.argv[2]}, d = {sys.argv[3]}; medians of {len(rows['numpy'])} runs")
print("| computation | seconds | ratio |")
print("|---|---|---|")
print(f"| numpy X^T X (float32, OpenBLAS) | {med['numpy']:.3f} | 1.00 |")
print(f"| relu-fpt cpu, K = 1 | {med['k1']:.3f} | {med['k1']/med['numpy']:.2f} x numpy |")
print(f"| relu-fpt cpu, K = 64 bins (r = 2) | {med['k64']:.3f} | {med['k64']/med['k1']:.2f} x own K = 1 |")
PY
