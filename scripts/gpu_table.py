#!/usr/bin/env python3
"""The README's GPU moments table, built from a hardware run's report (scripts/gpu_check.sh).

    python3 scripts/gpu_table.py docs/measurements/2026-12-04-h200-syrk.json

Prints a markdown table: for each (d, K) of the run, relu-fpt's seconds and GFLOP/s (the useful
count n d (d + 1) / s), the fastest tile of the run's sweep where it has one, PyTorch fp32 and
TF32 from the same run, and the ratios to PyTorch fp32; then the device, date and commit.
"""
import json
import sys


def main(path):
    r = json.load(open(path))
    bench = {}
    for b in r["bench"]:
        res = b.get("result")
        if res and b["label"].startswith("gpu d="):
            bench[(res["d"], res["bins"])] = res
        if res and b["label"].startswith("cpu d="):
            bench[("cpu", res["d"], res["bins"])] = res
    torch = {(t["d"], t["bins"], t["precision"]): t for t in r.get("torch", [])}
    sweep = {}
    for s in r.get("tile_sweep", []):
        best = sweep.get(s["d"])
        if best is None or s["seconds"] < best["seconds"]:
            sweep[s["d"]] = s
    print("| d | K | relu-fpt (s) | GFLOP/s | best tile of the sweep (s) | PyTorch fp32 (s) | "
          "PyTorch TF32 (s) | relu-fpt / PyTorch fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for (d, k), res in sorted((key, v) for key, v in bench.items() if key[0] != "cpu"):
        fp32 = torch.get((d, k, "highest"))
        tf32 = torch.get((d, k, "high"))
        tile = sweep.get(d) if k == 1 else None
        best = min(res["seconds"], tile["seconds"]) if tile else res["seconds"]
        cells = [
            str(d), str(k), f'{res["seconds"]:.4f}', f'{res["gflops"]:,.0f}',
            f'{tile["seconds"]:.4f} ({tile["tile"]})' if tile else "-",
            f'{fp32["seconds"]:.4f}' if fp32 else "-",
            f'{tf32["seconds"]:.4f}' if tf32 else "-",
            f'{best / fp32["seconds"]:.2f}x' if fp32 else "-",
        ]
        print("| " + " | ".join(cells) + " |")
    cpu = [(key, v) for key, v in bench.items() if key[0] == "cpu"]
    for (_, d, k), res in sorted(cpu):
        print(f'\nCPU backend on the same host ({r.get("cores")} cores), d = {d}, K = {k}: '
              f'{res["seconds"]:.3f} s, {res["gflops"]:,.0f} GFLOP/s', end="")
    commit = r.get("commit", "").split()
    built = commit[0][:10] + (" plus uncommitted changes" if "+uncommitted" in commit else "")
    print(f'\n\nDevice: {(r.get("gpu") or "").strip()}; host: {r.get("cpu")}; '
          f'{r.get("date")}; built from {built}.')
    if r.get("note"):
        print(f'Note: {r["note"]}')


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/measurements/2026-12-04-h200-syrk.json")
