"""Side-by-side: relu-fpt learn against scikit-learn's MLPRegressor on the same samples.

For each teacher family: `relu-fpt generate` writes train samples and a fresh test set, relu-fpt
learns (with and without the polish) and scikit-learn's MLPRegressor (Adam, hidden widths twice
the teacher's, early stopping) trains on the same x.npy / y.npy. Both are scored on the same
fresh test samples; wall times include everything each tool does after the data is on disk.

Both tools are deterministic for a fixed seed, so with --repeats R each is run R times and the
median wall time is reported (the errors are those of every run).

Usage: python3 scripts/compare_sklearn.py [--n 1000000] [--d 128] [--families parity,fan,...]
         [--repeats 3]
Needs numpy and scikit-learn (pip install numpy scikit-learn). Prints a Markdown table.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time
import numpy as np
from bench_subspace import cpu_model  # same folder

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")
FAMILIES = {  # family -> (generate flags, teacher hidden widths for the MLP's size)
    "parity": (["--teacher", "parity", "--k", "4"], [16]),
    "fan": (["--teacher", "fan", "--m", "4"], [8]),
    "deep-parity": (["--teacher", "deep-parity", "--k", "3"], [6, 8]),
    "composite": (["--teacher", "composite"], [9]),
    "random": (["--teacher", "random", "--widths", "4,4", "--bias", "--noise", "0.05"], [4, 4]),
}


def median_seconds(f, repeats):
    """f's result and the median wall time of `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = f()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times)


def run(cmd, repeats=1):
    out, secs = median_seconds(
        lambda: subprocess.run(cmd, check=True, capture_output=True, text=True).stdout, repeats)
    return out, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--n-test", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per tool (median)")
    a = ap.parse_args()
    from sklearn.neural_network import MLPRegressor

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in a.families.split(","):
            flags, widths = FAMILIES[fam]
            train, test = os.path.join(tmp, fam), os.path.join(tmp, fam + "-test")
            base = [BIN, "generate", *flags, "--d", str(a.d)]
            run(base + ["--n", str(a.n), "--seed", str(a.seed), "--out", train])
            # Same teacher (same seed), fresh samples: the test split is offset inside the stream.
            run(base + ["--n", str(a.n + a.n_test), "--seed", str(a.seed), "--out", test])
            xt = np.load(os.path.join(test, "x.npy"), mmap_mode="r")[a.n:]
            yt = np.load(os.path.join(test, "y.npy"), mmap_mode="r")[a.n:]
            var = float(np.var(yt))
            res = {"family": fam}
            for polish in (True, False):
                model = os.path.join(tmp, f"{fam}-model-{polish}.json")
                cmd = [BIN, "learn", "--x", f"{train}/x.npy", "--y", f"{train}/y.npy",
                       "--seed", str(a.seed), "--json", "--out", model]
                if not polish:
                    cmd.append("--no-polish")
                try:
                    _, secs = run(cmd, a.repeats)
                except subprocess.CalledProcessError as e:  # e.g. too few samples: no direction found
                    res["polish" if polish else "nopolish"] = (float("nan"), 0.0)
                    print(f"{fam}: learn failed: {e.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                    continue
                pred = os.path.join(tmp, "pred.npy")
                np.save(os.path.join(tmp, "xt.npy"), np.ascontiguousarray(xt))
                run([BIN, "predict", "--model", model, "--x", os.path.join(tmp, "xt.npy"), "--out", pred])
                mse = float(np.mean((np.load(pred) - yt) ** 2))
                res["polish" if polish else "nopolish"] = (mse / var, secs)
            x = np.load(os.path.join(train, "x.npy"))
            y = np.load(os.path.join(train, "y.npy"))
            def fit():
                mlp = MLPRegressor(hidden_layer_sizes=[2 * w for w in widths], solver="adam",
                                   early_stopping=True, random_state=a.seed, max_iter=200)
                return mlp.fit(x, y)
            mlp, secs = median_seconds(fit, a.repeats)
            res["sklearn"] = (float(np.mean((mlp.predict(np.asarray(xt)) - yt) ** 2)) / var, secs)
            rows.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
    print(f"| teacher (d = {a.d}, N = {a.n}) | relu-fpt MSE/Var (s) | without polish (s) | "
          "MLPRegressor MSE/Var (s) | MLPRegressor time / relu-fpt time |")
    print("|---|---|---|---|---|")
    for r in rows:
        f = lambda v: f"{v[0]:.2e} ({v[1]:.1f})"
        ratio = r["sklearn"][1] / r["polish"][1] if r["polish"][1] > 0 else float("nan")
        print(f"| {r['family']} | {f(r['polish'])} | {f(r['nopolish'])} | {f(r['sklearn'])} | "
              f"{ratio:.1f} |")
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} threads; "
          f"wall seconds are medians of {a.repeats} run(s).")


if __name__ == "__main__":
    main()
