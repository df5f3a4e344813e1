"""Benchmark families: relu-fpt learn against scikit-learn's MLPRegressor on data built broadly,
not for one teacher: hard teachers, random deep networks of first-layer rank up to 16, label
noise up to 25% of Var(y), d up to 512, N down to 1e5, anisotropic and heavy-tailed inputs, and
labels independent of x.

Each case takes a teacher network from `relu-fpt generate` (its teacher.json), draws x here in
numpy from the case's input law (N(0, I); N(mu, Sigma) with Sigma's eigenvalues spread over
[1/4, 4]; a multivariate Student t with 5 degrees of freedom scaled to unit covariance), sets
y = F(x) + noise with the teacher's forward pass, and writes x.npy / y.npy. relu-fpt learns with
its defaults; MLPRegressor (Adam, hidden widths twice the teacher's, early stopping) trains on
the same rows. Both are scored on 1e5 fresh rows against noiseless labels (MSE / Var(F(x))).
"missed" is the teacher's gradient energy outside the span of the learned model's basis,
E||P_perp grad F||^2 / E||grad F||^2 on the test rows: how much of the relevant subspace the
model misses. Wall seconds include reading the files (relu-fpt) and the `fit` call (MLP).

Usage: python3 scripts/bench_families.py [--cases name,name] [--no-mlp | --no-ours]
         [--scale 0.5] [--raw rows.jsonl [--resume]] [--keep DIR]
       python3 scripts/bench_families.py --time-to-accuracy [--cases ...] [--scale 0.5]
         [--raw rows.jsonl] [--plot curves.svg]
(--no-mlp, then --no-ours --resume on the same --raw file, gives the table in two sittings.)
Needs numpy and scikit-learn (and matplotlib for --plot). Prints a Markdown table; --raw
appends one JSON line per case.

--time-to-accuracy runs relu-fpt and the MLP one after the other on each case, in one sitting,
and compares time to accuracy on the same held-out rows: both train on the first 80% of the
rows and are scored on the last 20% (relu-fpt's validation split), MSE / Var(y) there. The MLP
is trained epoch by epoch (partial_fit, same widths and Adam settings) and scored after every
epoch, stopping as its early stopping would (no improvement of more than 1e-4 in 10 epochs,
at most 200), and keeps its best epoch; its curve is validation error against the seconds of
its fitting and scoring. relu-fpt's curve is the best validation error so far against seconds
since `learn` began, from `learn --json` (each stage's result at its end, and the trainers'
validation checks in between, which score the first 32768 validation rows). The table gives
each one's final test error (1e5 fresh rows, noiseless labels) and wall seconds, and the
seconds relu-fpt needed to reach the MLP's final validation error. --plot draws both curves for
each case run (two cases make a readable figure).
"""
import argparse, json, os, subprocess, sys, tempfile, time
import numpy as np

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")

# name -> (generate flags, d, N, input law, label noise as a fraction of Var(y), MLP widths)
CASES = {
    "random [6,6] k=6, d=96": (["--teacher", "random", "--widths", "6,6"], 96, 600_000, "gauss", 0, [6, 6]),
    "random [4,4] bias, 25% noise, d=48": (["--teacher", "random", "--widths", "4,4", "--bias"], 48, 400_000, "gauss", 0.25, [4, 4]),
    "random [4,4], d=384": (["--teacher", "random", "--widths", "4,4"], 384, 1_000_000, "gauss", 0, [4, 4]),
    "random [4,4], d=512, N=5e5": (["--teacher", "random", "--widths", "4,4"], 512, 500_000, "gauss", 0, [4, 4]),
    "parity k=4, d=160, N=4e5": (["--teacher", "parity", "--k", "4"], 160, 400_000, "gauss", 0, [16]),
    "parity k=4, d=160, N=2e5": (["--teacher", "parity", "--k", "4"], 160, 200_000, "gauss", 0, [16]),
    "random [4,4], anisotropic, d=64": (["--teacher", "random", "--widths", "4,4"], 64, 400_000, "aniso", 0, [4, 4]),
    "random [4,4], Student t5, d=64": (["--teacher", "random", "--widths", "4,4"], 64, 400_000, "t5", 0, [4, 4]),
    "random [8,8] k=8, d=128": (["--teacher", "random", "--widths", "8,8"], 128, 1_000_000, "gauss", 0, [8, 8]),
    "random [12,6] k=12, d=128": (["--teacher", "random", "--widths", "12,6"], 128, 1_000_000, "gauss", 0, [12, 6]),
    "random [16,8] k=16, d=256": (["--teacher", "random", "--widths", "16,8"], 256, 1_000_000, "gauss", 0, [16, 8]),
    "random [4,4], small N=1e5, d=32": (["--teacher", "random", "--widths", "4,4"], 32, 100_000, "gauss", 0.05, [4, 4]),
    # The MLP's width is capped at 256 here (twice the teacher's would be 2048 units).
    "parity k=10, d=64": (["--teacher", "parity", "--k", "10"], 64, 1_000_000, "gauss", 0, [128]),
    "pure noise, d=64": (["--teacher", "random", "--widths", "4,4"], 64, 400_000, "noise", 0, [4, 4]),
    "parity k=4, d=128": (["--teacher", "parity", "--k", "4"], 128, 1_000_000, "gauss", 0, [16]),
    "fan m=4, d=128": (["--teacher", "fan", "--m", "4"], 128, 1_000_000, "gauss", 0, [8]),
    "deep parity k=3, d=128": (["--teacher", "deep-parity", "--k", "3"], 128, 1_000_000, "gauss", 0, [6, 8]),
    "composite, d=128": (["--teacher", "composite"], 128, 1_000_000, "gauss", 0, [9]),
    "random [4,4] bias, d=128": (["--teacher", "random", "--widths", "4,4", "--bias"], 128, 1_000_000, "gauss", 0.0025, [4, 4]),
    # Three hidden layers with biases and label noise of 10% of the label's standard deviation
    # (issue 26): the one family where MLPRegressor once won.
    "deep [8,8,8] bias, 10% noise, d=256": (["--teacher", "random", "--widths", "8,8,8", "--bias"], 256, 600_000, "gauss", 0.01, [16, 16, 16]),
}


def forward(teacher, x):
    """The teacher's output and its gradient with respect to x (rows)."""
    h = x.astype(np.float64)
    if teacher.get("projection"):
        h = h @ np.array(teacher["projection"]).T
    layers = teacher["layers"]
    masks = []
    for i, layer in enumerate(layers):
        w, b = np.array(layer["weights"]), np.array(layer["bias"])
        h = h @ w.T + b
        if i + 1 < len(layers):
            masks.append(h > 0)
            h = np.maximum(h, 0)
    g = np.ones((x.shape[0], 1))
    for i in range(len(layers) - 1, -1, -1):
        g = g @ np.array(layers[i]["weights"])
        if i > 0:
            g = g * masks[i - 1]
    if teacher.get("projection"):
        g = g @ np.array(teacher["projection"])
    return h[:, 0], g


def draw_x(law, n, d, rng, frame):
    g = rng.standard_normal((n, d))
    if law in ("gauss", "noise"):
        return g
    if law == "t5":  # multivariate t, 5 degrees of freedom, unit covariance
        scale = np.sqrt(3.0 / 5.0) / np.sqrt(rng.chisquare(5, size=(n, 1)) / 5.0)
        return g * scale
    if law == "aniso":  # N(mu, Sigma): eigenvalues log-spaced over [1/4, 4] in a random frame
        q, mu = frame
        ev = np.geomspace(0.25, 4.0, d)
        return (g * np.sqrt(ev)) @ q.T + mu
    raise ValueError(law)


def make_data(teacher, law, n, d, noise_frac, seed, path):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    frame = (q, 0.5 * rng.standard_normal(d))
    x = draw_x(law, n, d, rng, frame)
    f, _ = forward(teacher, x)
    var = f.var()
    if law == "noise":  # labels independent of x, same marginal
        y = rng.permutation(f)
    else:
        y = f + rng.standard_normal(n) * np.sqrt(noise_frac * var)
    os.makedirs(path, exist_ok=True)
    np.save(os.path.join(path, "x.npy"), x.astype(np.float32))
    np.save(os.path.join(path, "y.npy"), y.astype(np.float32))
    xt = draw_x(law, 100_000, d, rng, frame)
    ft, gt = forward(teacher, xt)
    return xt.astype(np.float32), ft, gt


def missed_energy(subspace, grads):
    if not subspace:
        return 1.0
    b = np.array(subspace)
    q, _ = np.linalg.qr(b.T)
    inside = (grads @ q) ** 2
    total = (grads ** 2).sum()
    return float(max(total - inside.sum(), 0.0) / total)


def case_data(name, spec, args, tmp):
    """A case's data: N (scaled), the folder holding x.npy, y.npy and teacher.json, the
    teacher, and the test rows with their noiseless labels and gradients."""
    flags, d, n, law, noise, _ = spec
    n = max(int(n * args.scale), 20_000)
    path = os.path.join(tmp, name.replace(" ", "_").replace(",", "").replace("=", ""))
    subprocess.run([BIN, "generate", *flags, "--d", str(d), "--n", "1", "--seed", str(args.seed),
                    "--out", path], check=True, capture_output=True)
    teacher = json.load(open(os.path.join(path, "teacher.json")))
    xt, ft, gt = make_data(teacher, law, n, d, noise, args.seed, path)
    return n, path, teacher, xt, ft, gt


def predict_test(model, xt, path):
    """relu-fpt's predictions (f64) of `model` on the test rows xt, through `relu-fpt predict`."""
    np.save(os.path.join(path, "xt.npy"), xt)
    subprocess.run([BIN, "predict", "--model", model, "--x", os.path.join(path, "xt.npy"),
                    "--out", os.path.join(path, "pt.npy"), "--backend", "cpu"],
                   check=True, capture_output=True)
    return np.load(os.path.join(path, "pt.npy")).astype(np.float64)


def run_case(name, spec, args, tmp, have):
    """One case's row; with --resume the parts `have` already holds are not run again."""
    _, d, _, law, noise, widths = spec
    n, path, _, xt, ft, gt = case_data(name, spec, args, tmp)
    var = ft.var()
    row = {"case": name, "d": d, "n": n, "law": law, "noise": noise}
    model = os.path.join(path, "model.json")
    t = time.perf_counter()
    skip = args.resume and "relu_fpt" in have or args.no_ours
    learn = [BIN, "learn", "--x", os.path.join(path, "x.npy"), "--y", os.path.join(path, "y.npy"),
             "--out", model, "--backend", "cpu", "--seed", str(args.seed), "--json",
             *args.learn_flags.split()]
    p = (subprocess.CompletedProcess([], 0, "", "") if skip
         else subprocess.run(learn, capture_output=True, text=True))
    row["relu_fpt_seconds"] = time.perf_counter() - t
    if skip:
        del row["relu_fpt_seconds"]
    elif p.returncode == 0:
        rep = json.loads(p.stdout)
        pred = predict_test(model, xt, path)
        m = json.load(open(model))
        row.update(relu_fpt=float(((pred - ft) ** 2).mean() / var),
                   dim=rep["model_dimension"], final_stage=rep["final_stage"],
                   missed=missed_energy(m.get("subspace") or m.get("projection"), gt),
                   stages={s["stage"]: s["validation_mse"] / rep["validation_var"]
                           for s in rep["stages"] if s["validation_mse"] is not None})
    else:
        row.update(relu_fpt=None, dim=0, exit=p.returncode, error=p.stderr.strip()[-300:])
    row["relevant"] = 0 if law == "noise" else int(
        np.linalg.matrix_rank(gt[:2000], tol=1e-6 * np.abs(gt).max()))
    if not args.no_mlp and not (args.resume and "mlp" in have):
        from sklearn.neural_network import MLPRegressor
        x = np.load(os.path.join(path, "x.npy"))
        y = np.load(os.path.join(path, "y.npy"))
        mlp = MLPRegressor(hidden_layer_sizes=[2 * w for w in widths], early_stopping=True,
                           random_state=args.seed, max_iter=200)
        t = time.perf_counter()
        mlp.fit(x, y)
        row["mlp_seconds"] = time.perf_counter() - t
        row["mlp"] = float(((mlp.predict(xt) - ft) ** 2).mean() / var)
    return row


def ours_curve(rep):
    """relu-fpt's best validation MSE so far against seconds since learn began (as
    LearnReport::curve in src/learn/mod.rs), from its --json report."""
    best, out = float("inf"), []
    for st in rep["stages"]:
        for c in st.get("curve", []):
            best = min(best, c["best_mse"])
            out.append((c["seconds"], best))
        if st.get("validation_mse") is not None:
            best = min(best, st["validation_mse"])
            out.append((st.get("started", 0.0) + st["seconds"], best))
    return out


def mlp_curve(widths, x, y, n_train, seed, max_iter=200, patience=10, tol=1e-4):
    """MLPRegressor trained epoch by epoch on the first n_train rows, scored on the rest after
    every epoch: the curve (seconds, validation MSE), the best model and its epoch count."""
    import copy
    from sklearn.neural_network import MLPRegressor
    mlp = MLPRegressor(hidden_layer_sizes=[2 * w for w in widths], random_state=seed)
    xt, yt, xv, yv = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    rng = np.random.default_rng(seed)
    curve, best, best_model, stall, t = [], float("inf"), None, 0, time.perf_counter()
    for _ in range(max_iter):
        order = rng.permutation(n_train)  # partial_fit does not shuffle by itself
        mlp.partial_fit(xt[order], yt[order])
        mse = float(((mlp.predict(xv) - yv) ** 2).mean())
        curve.append((time.perf_counter() - t, min(best, mse)))
        if mse < best * (1 - tol):
            stall = 0
        else:
            stall += 1
        if mse < best:
            best, best_model = mse, copy.deepcopy(mlp)
        if stall >= patience:
            break
    return curve, best_model, len(curve)


def time_to_accuracy(name, spec, args, tmp):
    """One case of --time-to-accuracy: relu-fpt, then the MLP, on the same split."""
    _, d, _, law, noise, widths = spec
    n, path, _, xt, ft, _ = case_data(name, spec, args, tmp)
    var_f = ft.var()
    x, y = np.load(os.path.join(path, "x.npy")), np.load(os.path.join(path, "y.npy"))
    n_val = int(round(n * 0.2))
    var_y = float(y[n - n_val:].astype(np.float64).var())
    row = {"case": name, "d": d, "n": n, "law": law, "noise": noise, "mode": "time-to-accuracy"}
    model = os.path.join(path, "model.json")
    t = time.perf_counter()
    p = subprocess.run([BIN, "learn", "--x", os.path.join(path, "x.npy"), "--y",
                        os.path.join(path, "y.npy"), "--out", model, "--backend", "cpu", "--seed",
                        str(args.seed), "--json", *args.learn_flags.split()],
                       capture_output=True, text=True)
    row["relu_fpt_seconds"] = time.perf_counter() - t
    if p.returncode != 0:
        row.update(error=p.stderr.strip()[-300:])
        return row
    rep = json.loads(p.stdout)
    pred = predict_test(model, xt, path)
    row["relu_fpt"] = float(((pred - ft) ** 2).mean() / var_f)
    row["relu_fpt_curve"] = [(s, m / rep["validation_var"]) for s, m in ours_curve(rep)]
    row["relu_fpt_validation"] = rep["validation_mse"] / rep["validation_var"]
    t = time.perf_counter()
    curve, mlp, epochs = mlp_curve(widths, x, y, n - n_val, args.seed)
    row["mlp_seconds"] = time.perf_counter() - t
    row["mlp_epochs"] = epochs
    row["mlp"] = float(((mlp.predict(xt) - ft) ** 2).mean() / var_f)
    row["mlp_curve"] = [(s, m / var_y) for s, m in curve]
    row["mlp_validation"] = min(m for _, m in row["mlp_curve"])
    reach = [s for s, m in row["relu_fpt_curve"] if m <= row["mlp_validation"]]
    row["relu_fpt_seconds_to_mlp"] = reach[0] if reach else None
    return row


def print_time_row(row):
    if "error" in row:
        print(f"| {row['case']} | {rows(row['n'])} | exit ({row['error'][-80:]}) | | | |", flush=True)
        return
    reach = row["relu_fpt_seconds_to_mlp"]
    print(f"| {row['case']} | {rows(row['n'])} | {fmt(row['relu_fpt'])} ({row['relu_fpt_seconds']:.1f}) "
          f"| {fmt(row['mlp'])} ({row['mlp_seconds']:.1f}, {row['mlp_epochs']} epochs) "
          f"| {fmt(row['mlp_validation'])} | {'not reached' if reach is None else f'{reach:.1f}'} |",
          flush=True)


def plot_curves(rows_, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    fig, axes = plt.subplots(1, len(rows_), figsize=(5.5 * len(rows_), 4), squeeze=False)
    for ax, row in zip(axes[0], rows_):
        for key, label in (("relu_fpt_curve", "relu-fpt"), ("mlp_curve", "MLPRegressor")):
            pts = row.get(key) or []
            if pts:
                ax.step([s for s, _ in pts], [m for _, m in pts], where="post", label=label)
        if row.get("mlp_validation"):
            ax.axhline(row["mlp_validation"], color="grey", ls=":", lw=1,
                       label="MLPRegressor's final validation error")
        ax.set_xscale("log")
        ax.set_yscale("log")
        # Plain numbers on the seconds axis, and no labels on its minor ticks (they overlap).
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("seconds since the start of fitting (one sitting, same machine)")
        ax.set_ylabel("validation MSE / Var(y), best so far")
        ax.set_title(f"{row['case']}, N = {rows(row['n'])}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def rows(n):
    """4e5, 1e6: the sizes as the case names write them."""
    m, e = f"{n:.1e}".split("e")
    return f"{float(m):g}e{int(e)}"


def fmt(v):
    if v is None:
        return "-"
    return f"{v:.2g}" if abs(v) < 1e-3 or abs(v) >= 100 else f"{v:.3g}"


def print_row(row):
    if row.get("relu_fpt") is not None:
        ours = f"{fmt(row['relu_fpt'])} ({row['relu_fpt_seconds']:.0f})"
    elif "exit" in row:
        why = row.get("error", "").split("error: ")[-1].split(":")[0]
        ours = f"exit {row['exit']} ({why})"
    else:
        ours = "-"
    mlp = f"{fmt(row['mlp'])} ({row['mlp_seconds']:.0f})" if "mlp" in row else "-"
    print(f"| {row['case']} | {rows(row['n'])} | {row['relevant']} | {row.get('dim', '-')} | "
          f"{fmt(row.get('missed'))} | {ours} | {row.get('final_stage', '-')} | {mlp} |",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="", help="substrings of case names, separated by commas "
                    "(or by ';' when a name holds a comma)")
    ap.add_argument("--no-mlp", action="store_true", help="relu-fpt only")
    ap.add_argument("--no-ours", action="store_true", help="MLPRegressor only")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every N")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--learn-flags", default="", help="extra flags for relu-fpt learn, e.g. "
                    "\"--deep-widths 0\" for the pipeline without the deep-net stage")
    ap.add_argument("--raw", help="append one JSON line per case to this file")
    ap.add_argument("--resume", action="store_true",
                    help="with --raw: skip the cases it already holds and print them from it")
    ap.add_argument("--keep", help="keep the data under this directory")
    ap.add_argument("--time-to-accuracy", action="store_true",
                    help="relu-fpt and the MLP side by side: final errors, seconds, and the "
                    "seconds relu-fpt needs to reach the MLP's final validation error")
    ap.add_argument("--plot", help="with --time-to-accuracy: draw the curves to this file")
    args = ap.parse_args()
    # Names hold commas ("random [6,6] k=6, d=96"): a list with ';' is split there instead.
    want = [c for c in args.cases.split(";" if ";" in args.cases else ",") if c]
    cases = {k: v for k, v in CASES.items() if not want or any(w in k for w in want)}
    tmp = args.keep or tempfile.mkdtemp(prefix="relu-fpt-families-")
    if args.time_to_accuracy:
        print("| case | N | relu-fpt test MSE/Var (s) | MLPRegressor test MSE/Var (s) "
              "| MLP's validation MSE/Var | relu-fpt's seconds to reach it |")
        print("|---|---|---|---|---|---|")
        done = []
        for name, spec in cases.items():
            if spec[3] == "noise":
                continue  # no structure: nothing to race to
            row = time_to_accuracy(name, spec, args, tmp)
            done.append(row)
            if args.raw:
                with open(args.raw, "a") as f:
                    f.write(json.dumps(row) + "\n")
            print_time_row(row)
            if not args.keep:
                clean(tmp)
        if args.plot:
            plot_curves([r for r in done if "error" not in r], args.plot)
        return 0
    print("| case | N | relevant dim | found | gradient energy missed | relu-fpt test MSE/Var (s) "
          "| final stage | MLPRegressor (s) |")
    print("|---|---|---|---|---|---|---|---|")
    done = {}
    if args.raw and os.path.exists(args.raw):
        for r in map(json.loads, open(args.raw)):
            done.setdefault(r["case"], {}).update(r)
    for name, spec in cases.items():
        have = done.get(name, {}) if args.resume else {}
        ours_done = "relu_fpt" in have or "exit" in have or args.no_ours
        if ours_done and ("mlp" in have or args.no_mlp):
            print_row(have)  # nothing left to run
            continue
        row = run_case(name, spec, args, tmp, have)
        if args.raw:
            with open(args.raw, "a") as f:
                f.write(json.dumps(row) + "\n")
        row = {**have, **row} if args.resume else row
        print_row(row)
        if not args.keep:
            clean(tmp)


def clean(tmp):
    """Removes the cases' data under tmp."""
    for f in os.listdir(tmp):
        p = os.path.join(tmp, f)
        if os.path.isdir(p):
            for g in os.listdir(p):
                os.remove(os.path.join(p, g))
            os.rmdir(p)


if __name__ == "__main__":
    sys.exit(main())
