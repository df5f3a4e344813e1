"""How far a learned basis alone keeps any model from the teacher: the floor of test MSE/Var.

A model that sees x only through z = B x can do no better than E[F(x) | B x]; its MSE is at
least E[Var(F(x) | B x)]. For Gaussian x this floor is computed exactly by Monte Carlo: keep
x's projection onto the span of B and redraw the rest (x_r = P_B x + (I - P_B) g_r, g_r fresh
N(0, I)), and average the variance of F over the redraws. This separates the two errors of a
learned model: the basis's (the floor) and the fit's on top of it (test error - floor).

For each N and seed the script runs `relu-fpt learn` (the method given by --method, default
`paper` with the product net's widths given by --hidden) and prints the model's test
MSE/Var on 20 000 fresh rows, the floor of its basis, and the largest principal angle.

Usage:
  python3 scripts/basis_floor.py [--teacher parity --d 128 --k 4] [--ns 1000000,4000000]
         [--seeds 1,2,3] [--method paper] [--hidden 16] [--json OUT]
Needs numpy. The binary is $RELU_FPT (default target/release/relu-fpt).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scaling import BIN, forward, largest_angle, load_net, orth_rows, span_rows  # noqa: E402

TEST_ROWS = 20_000
# Redraws per test row: the floor's relative standard error is about sqrt(2 / (REDRAWS - 1))
# per row, averaged over TEST_ROWS rows.
REDRAWS = 16


def floor(teacher, basis, rng, rows=TEST_ROWS, redraws=REDRAWS):
    """E[Var(F(x) | B x)] / Var(F) by Monte Carlo (unbiased within-row variances)."""
    d = basis.shape[1]
    q = orth_rows(basis)
    x = rng.standard_normal((rows, d))
    y = forward(teacher, x)
    kept = (x @ q.T) @ q
    cond = np.zeros(rows)
    for start in range(0, rows, 2000):
        part = kept[start:start + 2000]
        g = rng.standard_normal((redraws, part.shape[0], d))
        g -= (g @ q.T) @ q
        f = np.stack([forward(teacher, part + g[i]) for i in range(redraws)])
        cond[start:start + part.shape[0]] = f.var(axis=0, ddof=1)
    return float(cond.mean() / y.var())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="parity")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--ns", default="1000000,2000000,4000000")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--method", default="paper")
    ap.add_argument("--hidden", default="16", help="widths of the product net (paper method)")
    ap.add_argument("--json", default=None, help="write every run's numbers here")
    a = ap.parse_args()
    flags = ["--teacher", a.teacher, "--d", str(a.d)]
    # The fan and composite teachers have no k (relu-fpt refuses --k for them).
    if a.teacher not in ("fan", "composite"):
        flags += ["--k", str(a.k)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in a.seeds.split(",")]:
            tdir = os.path.join(tmp, f"teacher{seed}")
            subprocess.run([BIN, "generate", *flags, "--n", "1", "--seed", str(seed),
                            "--out", tdir], check=True, capture_output=True)
            teacher = load_net(os.path.join(tdir, "teacher.json"))
            rng = np.random.default_rng(10_000 + seed)
            x_test = rng.standard_normal((TEST_ROWS, a.d))
            y_test = forward(teacher, x_test)
            for n in [int(v) for v in a.ns.split(",")]:
                model = os.path.join(tmp, "model.json")
                cmd = [BIN, "learn", *flags, "--n", str(n), "--seed", str(seed),
                       "--backend", "cpu", "--quiet", "--method", a.method, "--out", model]
                if a.method == "paper":
                    cmd += ["--hidden", a.hidden]
                began = time.time()
                subprocess.run(cmd, check=True, capture_output=True)
                seconds = time.time() - began
                net = load_net(model)
                test = float(np.mean((forward(net, x_test) - y_test) ** 2) / y_test.var())
                basis = span_rows(net)
                row = {"teacher": a.teacher, "d": a.d, "k": a.k, "method": a.method,
                       "seed": seed, "n": n, "test_mse_var": test,
                       "floor_mse_var": floor(teacher, basis, np.random.default_rng(seed)),
                       "angle": largest_angle(basis, span_rows(teacher)),
                       "seconds": seconds}
                rows.append(row)
                print(f"seed {seed} N {n:>9d}: test MSE/Var {test:.3e}, floor of its basis "
                      f"{row['floor_mse_var']:.3e}, largest angle {row['angle']:.4f} rad, "
                      f"{seconds:.1f} s", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
