"""Learning from few rows: parity k = 4 at d = 160 from 2e4 rows (issue 26's sample-efficiency
case), over seeds.

For each seed, `relu-fpt generate` draws 1.2e5 rows of the teacher (noiseless labels); `learn`
reads the first N (default 2e4: 1.6e4 to fit, 4e3 to validate) and `eval` scores the model on
the last 1e5, which it never saw. Prints one line per seed (test MSE / Var(y), the basis rows and
the gradient energy they miss, seconds) and, with --json, writes them.

Usage: python3 scripts/few_rows.py [--seeds 1,2,3] [--n 20000] [--d 160] [--k 4] [--json out.json]
Needs numpy. The binary is $RELU_FPT (default target/release/relu-fpt).
"""
import argparse, json, os, subprocess, tempfile, time

import numpy as np

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")
TEST_ROWS = 100_000


def run(*args):
    return subprocess.run([BIN, *args], check=True, capture_output=True, text=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=160)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            data = os.path.join(tmp, f"seed{seed}")
            run("generate", "--teacher", "parity", "--k", str(args.k), "--d", str(args.d),
                "--n", str(args.n + TEST_ROWS), "--seed", str(seed), "--out", data)
            x = np.load(os.path.join(data, "x.npy"), mmap_mode="r")
            y = np.load(os.path.join(data, "y.npy"), mmap_mode="r")
            paths = {name: os.path.join(data, name + ".npy") for name in ("xf", "yf", "xt", "yt")}
            np.save(paths["xf"], x[: args.n])
            np.save(paths["yf"], y[: args.n])
            np.save(paths["xt"], x[args.n:])
            np.save(paths["yt"], y[args.n:])
            model = os.path.join(data, "model.json")
            t = time.perf_counter()
            learn = subprocess.run([BIN, "learn", "--x", paths["xf"], "--y", paths["yf"], "--out", model,
                                    "--backend", "cpu", "--seed", str(seed), "--quiet"],
                                   capture_output=True, text=True)
            seconds = time.perf_counter() - t
            row = {"seed": seed, "d": args.d, "k": args.k, "n": args.n, "seconds": seconds}
            if learn.returncode != 0:
                row["error"] = learn.stderr.strip().splitlines()[-1]
                print(f"seed {seed}: exit {learn.returncode}: {row['error']}")
            else:
                ev = json.loads(run("eval", "--model", model, "--x", paths["xt"], "--y", paths["yt"],
                                    "--teacher", os.path.join(data, "teacher.json"),
                                    "--backend", "cpu", "--json").stdout)
                basis_rows = len(json.load(open(model)).get("projection") or [])
                row.update(test_mse_var=ev["relative_mse"], basis_rows=basis_rows,
                           missed=ev["gradient_energy_missed"])
                print(f"seed {seed}: test MSE/Var {row['test_mse_var']:.3g}, basis rows "
                      f"{basis_rows}, missed gradient energy {row['missed']:.2g}, {seconds:.1f} s")
            rows.append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
