"""Host seconds per filtered-PCA round against d: where a round's time goes.

For each d, `relu-fpt subspace --teacher random --d D --n N --backend cpu --json` runs once and
every round of its report is printed: its kind, filters scored, the pass over the samples
(sampling included: the teacher source draws its rows in each pass) and the host's share (the
eigen-solves of every filter and null contrast, and the merge). A round is pass-bound when the
host's share is small next to the pass.

Usage: python3 scripts/bench_rounds.py [--dims 128,384,512] [--n 1000000] [--seed 1]
Python standard library only. The binary is $RELU_FPT (default target/release/relu-fpt).
"""
import argparse, json, os, subprocess, sys, tempfile

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="128,384,512")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    print(f"N = {args.n}, random [4,4] teacher, CPU backend on {os.cpu_count()} threads; "
          f"load average {' '.join(load)} at the start")
    print("| d | round | kind | filters | pass (s) | host (s) | host share |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for d in map(int, args.dims.split(",")):
            cmd = [BIN, "subspace", "--teacher", "random", "--d", str(d), "--n", str(args.n),
                   "--seed", str(args.seed), "--backend", "cpu", "--json",
                   "--out", os.path.join(tmp, "s.json")]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                print(f"| {d} | failed: {p.stderr.strip()[-200:]} |||||", flush=True)
                continue
            report = json.loads(p.stdout.strip().splitlines()[-1])
            for i, r in enumerate(report["rounds"], 1):
                share = r["host_seconds"] / max(r["seconds"], 1e-12)
                print(f"| {d} | {i} | {r['kind']} | {r['filters']} | {r['pass_seconds']:.2f} | "
                      f"{r['host_seconds']:.2f} | {share:.0%} |", flush=True)
            print(f"| {d} | all | {len(report['rounds'])} rounds, "
                  f"{len(report['refine'])} refine steps | | | | "
                  f"{report['seconds']:.1f} s in all |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
