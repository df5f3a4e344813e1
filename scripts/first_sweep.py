"""The first refine sweep of `--method paper`, round by round: each direction's filters' and cell
SIR's predicted angles against the estimate from the round that found it.

The measurement behind SIR_AHEAD (src/subspace/paper.rs): run with a build from before that rule
(every first-sweep round then read second moments, so each has a filters' score); with a later
build a round the cell SIR settles has no filters and shows None for them.

Usage: python3 scripts/first_sweep.py [--json OUT]. The binary is $RELU_FPT (default
target/release/relu-fpt). About 6 minutes on 2 cores.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")
CASES = [
    ("parity", "--k 4", 32, 128_000), ("parity", "--k 4", 64, 512_000),
    ("parity", "--k 4", 128, 1_024_000), ("parity", "--k 6", 32, 512_000),
    ("parity", "--k 2", 64, 64_000), ("composite", "", 16, 40_000),
    ("composite", "", 64, 400_000), ("composite", "", 128, 1_000_000),
    ("random", "--k 4 --widths 4,4", 32, 64_000), ("random", "--k 4 --widths 4,4", 64, 256_000),
    ("deep-parity", "--k 3", 64, 320_000), ("fan", "", 32, 200_000),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rounds here")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for teacher, extra, d, n in CASES:
            for seed in (1, 2):
                cmd = [BIN, "subspace", "--teacher", teacher, "--d", str(d), "--n", str(n),
                       "--seed", str(seed), "--method", "paper", "--backend", "cpu", "--quiet",
                       "--json", "--out", os.path.join(tmp, "s.json"), *extra.split()]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
                r = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
                dim = len(r["basis"])
                refine = [x for x in r["rounds"] if x["kind"] == "refine"]
                # The first sweep: a round per direction, and the full pass after a "sir_first".
                first = [x for x in refine if x.get("refined_by") is not None][:dim]
                for x in first:
                    filters = 1.5 / x["scores"][0] if x["scores"] else None
                    row = {"teacher": f"{teacher} {extra}".strip(), "d": d, "n": n,
                           "seed": seed, "filters_angle": filters,
                           "before": x["predicted_angle_before"],
                           "kept": x["predicted_angle"], "refined_by": x["refined_by"]}
                    rows.append(row)
                    print(row, flush=True)
    with_filters = [r["filters_angle"] / r["before"] for r in rows if r["filters_angle"]]
    won = sum(r["refined_by"] == "filters" for r in rows)
    print(f"{len(rows)} first-sweep rounds; filters won {won}; filters' angle over the finding "
          f"round's: {min(with_filters):.2f}-{max(with_filters):.2f}" if with_filters else "")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"binary": BIN, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
