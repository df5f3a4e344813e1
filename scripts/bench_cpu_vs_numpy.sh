#!/usr/bin/env bash
# CPU moments against numpy's X^T X and against the machine's own FMA peak, measured side by
# side in one run: per repeat, `relu-fpt bench peak`, then for each d numpy's X^T X
# (scripts/np_moment.py), `relu-fpt bench moments` at K = 1 and at K = 64 bins (r = 2), each
# stated as a fraction of that repeat's peak.
# Usage: scripts/bench_cpu_vs_numpy.sh [N] [DIMS] [REPEATS]   (defaults 1000000 128,256 3)
#   KERNEL=avx2 (or portable) forces relu-fpt's moments kernel (default: the widest).
# Prints one JSON line per measurement and a Markdown table of medians over the repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}; dims=${2:-128,256}; reps=${3:-3}
bin=${CARGO_TARGET_DIR:-target}/release/relu-fpt
cargo build --release --quiet
kernel=${KERNEL:-auto}
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
for _ in $(seq "$reps"); do
  peak_json=$("$bin" bench peak --json)
  echo "peak 0 $peak_json" | tee -a "$tmp"
  peak=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["gflops_total"])' "$peak_json")
  for d in ${dims//,/ }; do
    python3 scripts/np_moment.py "$n" "$d" | sed "s/^/numpy $d /" | tee -a "$tmp"
    for k in 1 64; do
      "$bin" bench moments --n "$n" --d "$d" --bins "$k" --backend cpu --kernel "$kernel" \
        --peak-gflops "$peak" --json | sed "s/^/k$k $d /" | tee -a "$tmp"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$tmp" "$n" "$reps" "$load_before" "$load_after" <<'PY'
import json, os, platform, statistics, sys
path, n, reps, load_before, load_after = sys.argv[1:]
rows = {}
for line in open(path):
    tag, d, js = line.split(" ", 2)
    rows.setdefault((tag, int(d)), []).append(json.loads(js))
med = lambda tag, d, f: statistics.median(r[f] for r in rows[(tag, d)])
peak = med("peak", 0, "gflops_total")
peak_isa = rows[("peak", 0)][0]["isa"]
cpu = next((l.split(":")[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.processor())
kernel = next(r["kernel"] for (t, _), v in rows.items() if t == "k1" for r in v)
print(f"\nmachine: {cpu}, {os.cpu_count()} threads; load average {load_before} before, "
      f"{load_after} after; N = {n}; medians of {reps} repeats; FMA peak ({peak_isa}, all "
      f"threads) {peak:.1f} GFLOP/s; relu-fpt kernel {kernel}")
print("| d | computation | seconds | GFLOP/s | of FMA peak | ratio |")
print("|---|---|---|---|---|---|")
for d in sorted({d for (t, d) in rows if t != "peak"}):
    s_np, s1, s64 = (med(t, d, "seconds") for t in ("numpy", "k1", "k64"))
    g = lambda s: n_ * d * (d + 1) / s / 1e9
    n_ = int(n)
    print(f"| {d} | numpy X^T X (float32, OpenBLAS) | {s_np:.4f} | {g(s_np):.0f} | "
          f"{g(s_np) / peak:.0%} | 1.00 |")
    print(f"| {d} | relu-fpt cpu, K = 1 | {s1:.4f} | {g(s1):.0f} | {g(s1) / peak:.0%} | "
          f"{s1 / s_np:.2f} x numpy |")
    print(f"| {d} | relu-fpt cpu, K = 64 bins (r = 2) | {s64:.4f} | {g(s64):.0f} | "
          f"{g(s64) / peak:.0%} | {s64 / s1:.2f} x own K = 1 |")
PY
