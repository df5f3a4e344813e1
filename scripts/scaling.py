"""The paper's central claim measured: rows needed against d, and time against k.

Chen, Klivans and Meka claim that samples and time grow polynomially in d with an exponent
that does not depend on k, where gradient training needs about d^(k-1) samples or fails. This
script measures, for relu-fpt's default method, relu-fpt `--method paper` and an MLP trained
by Adam in numpy (fixed size, the same row budget):

1. rows needed to reach test MSE/Var <= 0.01 (and, for relu-fpt, a largest principal angle
   <= 0.1 rad between the model's projection and the teacher's first-layer span) against d,
   per teacher, over several seeds; the exponent of d fitted per method (least squares on
   log rows against log d, seed means of log rows, uncensored points only);
2. wall seconds of `learn` against k (parity teachers) at fixed d and N, for both methods.

Rows needed: N runs over a grid (ratio 2 from `--n0`); for each (method, teacher, d, seed) the
search starts at the seed's figure at the previous d (at the first d, from the middle of the
grid for the first seed and from the seed before's figure for the others) and walks up until
the criteria hold (and down while they still do); the first N of the grid that passes is the
figure. Each (learner, teacher) pair is a chain of such searches over d; `--jobs` chains run
side by side (default 2, the cores shared between them: relu-fpt's threads via
RAYON_NUM_THREADS, the MLP's numpy on one BLAS thread), which changes no figure, only the wall
time (relu-fpt's results do not depend on its thread count). A point that fails at the method's
largest N is censored (drawn as an open marker at that N, left out of the fit); a seed that
failed at the largest N at two d in a row is not run at larger d (more rows are needed as d
grows, so it would fail there too; such a point is censored), and when no seed is left the
method is not run at larger d for that teacher, as the table says. relu-fpt runs as a user gets
it: `learn --target-error` would save time, but stopping at an error target skips the stages
that find weak directions, which the angle criterion needs (random [4, 4] at d = 32 from 64 000
rows: 3 of its 4 directions with it, 0.068 rad without). Test error: 20 000 fresh rows drawn in
numpy (seeded) and labelled with the teacher read from `relu-fpt generate`'s teacher.json; the
model is evaluated from its JSON, in numpy.

Usage:
  python3 scripts/scaling.py [--quick] [--dims 32,64,128] [--seeds 3] [--out docs/figures]
With no option it runs the study the README shows (d = 32 to 512, four teachers, three
learners, three seeds, then the timing) in one invocation.
Needs numpy and matplotlib. The binary is $RELU_FPT (default target/release/relu-fpt).
Writes OUT/scaling_rows.png, OUT/scaling_time.png and OUT/scaling.json (every run's numbers).
"""
import argparse
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")
TARGET_MSE = 0.01
TARGET_ANGLE = 0.1
TEST_ROWS = 20_000
# The MLP stops after this many passes that do not lower its held-out error.
PATIENCE = 3


# ---------------------------------------------------------------- teachers and models in numpy

def load_net(path):
    with open(path) as f:
        j = json.load(f)
    proj = np.array(j["projection"], dtype=np.float64) if j.get("projection") else None
    layers = [(np.array(l["weights"], dtype=np.float64), np.array(l["bias"], dtype=np.float64))
              for l in j["layers"]]
    return proj, layers


def forward(net, x):
    proj, layers = net
    h = x @ proj.T if proj is not None else x
    for i, (w, b) in enumerate(layers):
        h = h @ w.T + b
        if i + 1 < len(layers):
            h = np.maximum(h, 0.0)
    return h[:, 0]


def span_rows(net):
    proj, layers = net
    return proj if proj is not None else layers[0][0]


def orth_rows(a):
    """Orthonormal rows spanning the rows of a."""
    _, sv, vt = np.linalg.svd(a, full_matrices=False)
    return vt[: int((sv > 1e-9 * sv[0]).sum())]


def largest_angle(a, b):
    """Largest principal angle between the row span of b (the truth) and that of a; pi/2 when
    a has fewer dimensions (a missed direction counts as a right angle)."""
    qa, qb = orth_rows(a), orth_rows(b)
    if qa.shape[0] < qb.shape[0]:
        return math.pi / 2
    sv = np.linalg.svd(qb @ qa.T, compute_uv=False)
    return float(np.arccos(np.clip(sv.min(), -1.0, 1.0)))


class Teacher:
    def __init__(self, kind, d, k, seed, tmp):
        self.kind, self.d, self.k, self.seed = kind, d, k, seed
        out = os.path.join(tmp, f"t_{kind}_{d}_{k}_{seed}")
        if not os.path.exists(os.path.join(out, "teacher.json")):
            # Written aside and renamed: chains running side by side may draw the same teacher.
            aside = tempfile.mkdtemp(dir=tmp)
            run([BIN, "generate", *teacher_flags(kind, d, k), "--n", "1", "--seed", str(seed),
                 "--out", os.path.join(aside, "t")])
            try:
                os.rename(os.path.join(aside, "t"), out)
            except OSError:
                pass  # another chain's copy is there: the same seed, the same teacher
        self.net = load_net(os.path.join(out, "teacher.json"))
        rng = np.random.default_rng(10_000 + seed)
        self.x_test = rng.standard_normal((TEST_ROWS, d))
        self.y_test = forward(self.net, self.x_test)
        self.var = float(self.y_test.var())

    def data(self, n, seed):
        rng = np.random.default_rng(seed)
        # Drawn in float32: drawing in float64 and converting took ten times as long (200 s
        # of the study's MLP rows).
        x = rng.standard_normal((n, self.d), dtype=np.float32)
        y = np.concatenate([forward(self.net, x[i:i + 65536].astype(np.float64))
                            for i in range(0, n, 65536)])
        return x, y.astype(np.float32)


def teacher_flags(kind, d, k):
    if kind == "parity":
        return ["--teacher", "parity", "--d", str(d), "--k", str(k)]
    return ["--teacher", "random", "--d", str(d), "--k", str(k), "--widths", f"{k},{k}"]


def paper_hidden(kind, k):
    return str(2 ** k) if kind == "parity" else f"{k},{k}"


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p


# ---------------------------------------------------------------- the three learners

def relu_fpt(method, t, n, tmp):
    model = os.path.join(tmp, f"model_{os.getpid()}.json")
    cmd = [BIN, "learn", *teacher_flags(t.kind, t.d, t.k), "--n", str(n), "--seed", str(t.seed),
           "--backend", "cpu", "--quiet", "--json", "--out", model]
    if method == "paper":
        cmd += ["--method", "paper", "--hidden", paper_hidden(t.kind, t.k)]
    start = time.time()
    p = run(cmd)
    seconds = time.time() - start
    if p.returncode == 2:
        # No structure found, or too few rows for a stage: a failure at this N.
        return {"mse": 1.0, "angle": math.pi / 2, "seconds": seconds, "found": 0,
                "error": p.stderr.strip().splitlines()[-1][:200]}
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    net = load_net(model)
    pred = forward(net, t.x_test)
    report = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
    return {
        "mse": float(np.mean((pred - t.y_test) ** 2) / t.var),
        "angle": largest_angle(span_rows(net), span_rows(t.net)),
        "seconds": seconds,
        "found": int(span_rows(net).shape[0]),
        # Which fit the search kept (the descent starts from it) and which stage made the model.
        "chosen": report.get("chosen"),
        "final_stage": report.get("final_stage"),
        "enumerate_mse": report.get("enumerate_mse"),
        "sphere_net_mse": report.get("sphere_net_mse"),
        "validation_var": report.get("validation_var"),
    }


def mlp(t, n, epochs, width=64, batch=256, lr=1e-3, seed=0):
    """A d -> width -> width -> 1 ReLU MLP trained by Adam (lr 1e-3, minibatches of 256) for at
    most `epochs` passes over the n rows, the epoch with the best error on 10% held-out rows
    kept; it stops after PATIENCE passes without a better one."""
    rng = np.random.default_rng(seed)
    x, y = t.data(n, 20_000 + t.seed)
    y_scale = float(np.sqrt(t.var))
    y = y / y_scale
    n_val = max(n // 10, 1)
    xv, yv, x, y = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
    d = t.d
    dims = [d, width, width, 1]
    params = []
    for a, b in zip(dims[:-1], dims[1:]):
        params.append(rng.standard_normal((a, b)).astype(np.float32) * np.float32(np.sqrt(2.0 / a)))
        params.append(np.zeros(b, np.float32))
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0

    def fwd(xb):
        hs = [xb]
        h = xb
        for i in range(0, len(params), 2):
            h = h @ params[i] + params[i + 1]
            if i + 2 < len(params):
                h = np.maximum(h, 0)
            hs.append(h)
        return hs

    def val_mse():
        return float(np.mean((fwd(xv)[-1][:, 0] - yv) ** 2))

    best = (val_mse(), [p.copy() for p in params])
    start = time.time()
    stale = 0
    for _ in range(epochs):
        if stale >= PATIENCE:
            break
        order = rng.permutation(len(y))
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            hs = fwd(x[idx])
            g = (hs[-1][:, 0] - y[idx])[:, None] * (2.0 / len(idx))
            grads = [None] * len(params)
            for i in range(len(params) - 2, -1, -2):
                grads[i] = hs[i // 2].T @ g
                grads[i + 1] = g.sum(0)
                if i > 0:
                    g = (g @ params[i].T) * (hs[i // 2] > 0)
            step += 1
            for i, p in enumerate(params):
                m[i] = b1 * m[i] + (1 - b1) * grads[i]
                v[i] = b2 * v[i] + (1 - b2) * grads[i] ** 2
                mh = m[i] / (1 - b1 ** step)
                vh = v[i] / (1 - b2 ** step)
                p -= (lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        e = val_mse()
        if e < best[0]:
            best = (e, [p.copy() for p in params])
            stale = 0
        else:
            stale += 1
    params[:] = best[1]
    pred = fwd(t.x_test.astype(np.float32))[-1][:, 0].astype(np.float64) * y_scale
    return {"mse": float(np.mean((pred - t.y_test) ** 2) / t.var), "angle": None,
            "seconds": time.time() - start, "found": None}


# ---------------------------------------------------------------- rows needed

def passes(method, res):
    ok = res["mse"] <= TARGET_MSE
    if method != "mlp":
        ok = ok and res["angle"] <= TARGET_ANGLE
    return ok


def rows_needed(method, t, grid, start, tmp, log, epochs, step=2):
    """Smallest grid N that passes (None when even the last fails), and every run made. A
    search from `start` in steps of `step` grid points (with 2, the one grid point between is
    tried at the end), assuming that more rows do not hurt. A start from the previous d's
    figure is usually at most one step from the answer, so it walks by 1."""
    results = {}

    def attempt(i):
        n = grid[i]
        if n not in results:
            if method == "mlp":
                res = mlp(t, n, epochs(n), seed=t.seed)
            else:
                res = relu_fpt(method, t, n, tmp)
            res["n"] = n
            res["pass"] = passes(method, res)
            results[n] = res
            log(method, t, res)
        return results[n]["pass"]

    last = len(grid) - 1
    i = min(max(start, 0), last)
    if attempt(i):
        hi = i  # passes
        lo = None  # fails
        while hi > 0:
            j = max(hi - step, 0)
            if attempt(j):
                hi = j
            else:
                lo = j
                break
    else:
        lo = i
        hi = None
        while lo < last:
            j = min(lo + step, last)
            if attempt(j):
                hi = j
                break
            lo = j
        if hi is None:
            return None, list(results.values())
    if lo is not None and hi - lo == 2 and step == 2 and attempt(lo + 1):
        hi = lo + 1
    return grid[hi], list(results.values())


# ---------------------------------------------------------------- one chain of the study

# Learners in the order their chains start, the costliest first (see `main`).
CHAIN_ORDER = ["paper", "default", "mlp"]


def worker_setup(threads):
    # relu-fpt's threads in this worker: the machine's cores shared between the workers.
    os.environ["RAYON_NUM_THREADS"] = str(threads)


def log_line(began, method, t, res):
    ang = "-" if res["angle"] is None else f"{res['angle']:.3f}"
    print(f"[{time.time() - began:6.0f} s] {method:7s} {case_name((t.kind, t.k)):14s} "
          f"d={t.d:4d} seed={t.seed} N={res['n']:8d}: MSE/Var {res['mse']:.2e}, angle {ang}, "
          f"{res['seconds']:.1f} s -> {'pass' if res['pass'] else 'fail'}", file=sys.stderr,
          flush=True)


def run_chain(case, method, dims, seeds, grid, mlp_max, max_d, max_epochs, tmp, began):
    """Rows needed for one learner on one teacher at every d in turn (each d's search starts
    from the one before's figures): the points, the fitted exponent and every run made."""
    runs = []

    def log(method, t, res):
        runs.append({"method": method, "case": case_name((t.kind, t.k)), "d": t.d,
                     "seed": t.seed, **res})
        log_line(began, method, t, res)

    def mlp_epochs(n):
        # Up to max_epochs passes, fewer on many rows (at most 2.56e6 row reads, at least 3).
        return max(3, min(max_epochs, 2_560_000 // n))

    mgrid = [n for n in grid if method != "mlp" or n <= mlp_max] or grid[:1]
    pts = []
    # The first d starts from the middle of the grid (16 000 rows).
    first = min(range(len(mgrid)), key=lambda i: abs(mgrid[i] - 16_000))
    guess = {s: first for s in seeds}
    prev_d = None
    # Per seed, the d in a row at which it failed at the largest N.
    failed_run = {s: 0 for s in seeds}
    for d in dims:
        if max_d is not None and d > max_d:
            break
        # A seed that failed at its largest N at the two d before would fail here too (more
        # rows are needed as d grows): it is not run.
        skipped = [s for s in seeds if failed_run[s] >= 2]
        if len(skipped) == len(seeds):
            pts.append({"d": d, "rows": [None] * len(seeds), "censored": True,
                        "skipped": True, "skipped_seeds": skipped, "max_n": mgrid[-1],
                        "floor": False, "log_mean": None, "log_std": 0.0})
            continue
        needed = []
        for s in seeds:
            if s in skipped:
                needed.append(None)
                continue
            t = Teacher(case[0], d, case[1], s, tmp)
            start, step = guess[s], 2
            if prev_d is not None:
                # Rows needed grow with d, but slower than d on most teachers: the search
                # starts at the previous d's figure and walks (a step too low is a run at
                # half the rows; a step too high, at twice). A censored seed starts at the
                # largest N.
                step = 1
            elif needed:
                # The first d's later seeds start at the seed before's figure.
                start, step = guess[seeds[len(needed) - 1]], 1
            n, _ = rows_needed(method, t, mgrid, start, tmp, log, mlp_epochs, step=step)
            needed.append(n)
            if n is not None:
                guess[s] = mgrid.index(n)
                failed_run[s] = 0
            else:
                guess[s] = len(mgrid) - 1
                failed_run[s] += 1
        logs = [math.log(n) for n in needed if n is not None]
        censored = len(logs) < len(needed)
        pts.append({
            "d": d, "rows": needed, "censored": censored, "max_n": mgrid[-1],
            "skipped_seeds": skipped,
            # The smallest N of the grid passed: the figure is an upper bound.
            "floor": any(n == mgrid[0] for n in needed),
            "log_mean": float(np.mean(logs)) if logs and not censored else None,
            "log_std": float(np.std(logs)) if logs and not censored else 0.0,
        })
        prev_d = d
    exponent = fit_exponent(
        [p["d"] for p in pts],
        [math.exp(p["log_mean"]) if p["log_mean"] is not None else None for p in pts])
    return pts, exponent, runs


def fit_exponent(ds, rows):
    """Slope of log rows against log d over the points with a figure (None with fewer than 2)."""
    pts = [(math.log(d), math.log(r)) for d, r in zip(ds, rows) if r is not None]
    if len(pts) < 2:
        return None
    a = np.array(pts)
    return float(np.polyfit(a[:, 0], a[:, 1], 1)[0])


# ---------------------------------------------------------------- figures

def draw(summary, time_rows, out, cases, methods, quick):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"default": "#1f77b4", "paper": "#d62728", "mlp": "#2ca02c"}
    labels = {"default": "relu-fpt (default)", "paper": "relu-fpt --method paper",
              "mlp": "MLP 64x64, Adam"}
    cols = max(min(len(cases), 2), 1)
    rws = max(math.ceil(len(cases) / cols), 1)
    fig, axes = plt.subplots(rws, cols, figsize=(6.2 * cols, 5.8 * rws), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        name = case_name(case)
        for method in methods:
            if method not in summary[name]:
                continue  # a merged case that a method was not run on
            pts = summary[name][method]
            ds = [p["d"] for p in pts]
            mean = [p["log_mean"] for p in pts]
            err = [p["log_std"] for p in pts]
            done = [(d, math.exp(m), math.exp(m) * (math.exp(e) - 1), math.exp(m) * (1 - math.exp(-e)))
                    for d, m, e, p in zip(ds, mean, err, pts) if m is not None and not p["censored"]]
            exp = summary[name]["exponents"].get(method)
            lab = labels[method] + (f" (slope {exp:.2f})" if exp is not None else " (no fit)")
            if done:
                ax.errorbar([p[0] for p in done], [p[1] for p in done],
                            yerr=[[p[3] for p in done], [p[2] for p in done]], fmt="o-",
                            color=colours[method], capsize=3, label=lab)
            else:
                ax.plot([], [], "o-", color=colours[method], label=lab)
            cens = [(p["d"], p["max_n"]) for p in pts if p["censored"] and not p.get("skipped")]
            if cens:
                ax.plot([c[0] for c in cens], [c[1] for c in cens], "^", mfc="none", ms=9,
                        color=colours[method],
                        label=f"{labels[method]}: not reached by N = {cens[0][1]:.3g} "
                              "(the largest it was given)" + skipped_note(pts))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input dimension d")
        ax.set_ylabel(f"rows needed (test MSE/Var <= {TARGET_MSE})")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        # Below the axes: inside, it hid points on some panels.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), framealpha=0.85)
    for ax in list(axes.flat)[len(cases):]:
        ax.axis("off")
    fig.suptitle("Rows needed against d (error bars: one geometric std over seeds)"
                 + (" [--quick]" if quick else ""))
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling_rows.png"), dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.2, 4.4))
    for method in ("default", "paper"):
        pts = [p for p in time_rows if p["method"] == method]
        ks = sorted({p["k"] for p in pts})
        mean = [float(np.mean([p["seconds"] for p in pts if p["k"] == k])) for k in ks]
        std = [float(np.std([p["seconds"] for p in pts if p["k"] == k])) for k in ks]
        ax.errorbar(ks, mean, yerr=std, fmt="o-", color=colours[method], capsize=3,
                    label=labels[method])
    if time_rows:
        ax.set_title(f"learn wall seconds, parity teachers, d = {time_rows[0]['d']}, "
                     f"N = {time_rows[0]['n']:.0e}")
    ax.set_yscale("log")
    ax.set_xlabel("k (parity teacher: 2^k hidden units, relevant dimension k)")
    ax.set_ylabel("wall seconds (mean +- std over seeds)")
    ax.set_xticks(sorted({p["k"] for p in time_rows}) or [2, 4])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scaling_time.png"), dpi=110)
    plt.close(fig)


def skipped_note(pts):
    skipped = [p["d"] for p in pts if p.get("skipped")]
    return f"; not run at d >= {skipped[0]}" if skipped else ""


def case_name(case):
    kind, k = case
    return f"parity k={k}" if kind == "parity" else f"random [{k},{k}]"


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes, one seed: checks that the script runs (CI)")
    ap.add_argument("--dims", default=None, help="comma list of d (default 32,64,128,256,512)")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per point (default 3)")
    ap.add_argument("--cases", default=None,
                    help="comma list of parity:K or random:K, each optionally :MAX_D (the "
                         "largest d it runs at), or none "
                         "(default parity:2,parity:4,parity:6:128,random:4)")
    ap.add_argument("--methods", default="default,paper,mlp")
    ap.add_argument("--n0", type=int, default=None, help="smallest N of the grid")
    ap.add_argument("--steps", type=int, default=None, help="grid points (ratio 2)")
    ap.add_argument("--mlp-max-n", type=int, default=None, help="largest N the MLP is given")
    ap.add_argument("--mlp-epochs", type=int, default=None)
    ap.add_argument("--time-d", type=int, default=None)
    ap.add_argument("--time-n", type=int, default=None)
    ap.add_argument("--time-ks", default=None, help="comma list of k, or none (default 2,4,6)")
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--jobs", type=int, default=2,
                    help="chains (learner, teacher) run side by side, the cores shared between "
                         "them (default 2)")
    ap.add_argument("--redraw", nargs="+", metavar="JSON",
                    help="draw the figures from scaling.json files of earlier runs instead of "
                         "running: a later file's (case, method) points (and runs) replace an "
                         "earlier file's, the first file's timing rows are kept")
    a = ap.parse_args()
    if a.redraw:
        return redraw(a.redraw, a.out)
    q = a.quick
    dims = [int(v) for v in (a.dims or ("8,16" if q else "32,64,128,256,512")).split(",")]
    seeds = list(range(1, 1 + (a.seeds or (1 if q else 3))))
    cases = a.cases or ("parity:2" if q else "parity:2,parity:4,parity:6:128,random:4")
    # "none" skips the rows-needed part (a run that only times learn against k). Parity k = 6
    # stops at d = 128 by default: its rows needed pass 1e6 beyond, minutes a run.
    cases = [] if cases == "none" else [c.split(":") for c in cases.split(",")]
    max_d = {(c[0], int(c[1])): int(c[2]) if len(c) > 2 else None for c in cases}
    cases = [(c[0], int(c[1])) for c in cases]
    methods = a.methods.split(",")
    n0 = a.n0 or (1000 if q else 250)
    steps = a.steps or (5 if q else 15)
    grid = [n0 * 2 ** i for i in range(steps)]
    mlp_max = a.mlp_max_n or (8000 if q else 1_024_000)
    # The MLP's passes: up to --mlp-epochs, fewer on many rows (see run_chain).
    max_epochs = a.mlp_epochs or (5 if q else 20)

    time_d = a.time_d or (16 if q else 32)
    time_n = a.time_n or (20_000 if q else 100_000)
    time_ks = a.time_ks or ("2" if q else "2,4,6")
    # "none" skips the timing part (a run that only adds rows-needed points to merge).
    time_ks = [] if time_ks == "none" else [int(v) for v in time_ks.split(",")]
    os.makedirs(a.out, exist_ok=True)
    began = time.time()
    jobs = max(1, a.jobs)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    runs = []
    summary = {name: {"exponents": {}} for name in map(case_name, cases)}

    def save_partial():
        # Every finished chain so far, so that a run stopped midway loses only the chains
        # under way.
        with open(os.path.join(a.out, "scaling.partial.json"), "w") as f:
            json.dump({"summary": summary, "runs": runs, "seconds": time.time() - began}, f)

    # The chains that took longest in earlier studies first (larger k, relu-fpt before the
    # MLP), so that the last one to start is short and the workers end together.
    chains = sorted(((case, method) for case in cases for method in methods),
                    key=lambda c: (-c[0][1], c[0][0] != "parity", CHAIN_ORDER.index(c[1])))
    with tempfile.TemporaryDirectory() as tmp:
        # BLAS in the workers on one thread: the MLP's numbers do not then depend on the
        # machine's core count (the workers import numpy after this is set).
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = "1"
        pool = ProcessPoolExecutor(max_workers=jobs, initializer=worker_setup,
                                   initargs=(threads,),
                                   mp_context=multiprocessing.get_context("spawn"))
        with pool:
            futures = {pool.submit(run_chain, case, method, dims, seeds, grid, mlp_max,
                                   max_d[case], max_epochs, tmp, began): (case, method)
                       for case, method in chains}
            for done in as_completed(futures):
                case, method = futures[done]
                pts, exponent, chain_runs = done.result()
                summary[case_name(case)][method] = pts
                summary[case_name(case)]["exponents"][method] = exponent
                runs.extend(chain_runs)
                save_partial()
        # In the order of the cases and methods, whichever chain ended first.
        order = {(case_name(c), m): i for i, (c, m) in enumerate(
            (c, m) for c in cases for m in methods)}
        runs.sort(key=lambda r: order[(r["case"], r["method"])])
        for name in summary:
            summary[name] = {"exponents": {m: summary[name]["exponents"][m] for m in methods},
                             **{m: summary[name][m] for m in methods}}
        time_rows = []
        for k in time_ks:
            for s in seeds:
                t = Teacher("parity", time_d, k, s, tmp)
                for method in ("default", "paper"):
                    res = relu_fpt(method, t, time_n, tmp)
                    time_rows.append({"method": method, "k": k, "d": time_d, "n": time_n,
                                      "seed": s, **res})
                    print(f"[{time.time() - began:6.0f} s] time {method:7s} k={k} seed={s}: "
                          f"{res['seconds']:.1f} s, MSE/Var {res['mse']:.2e}, angle "
                          f"{res['angle']:.3f}", file=sys.stderr)
    total = time.time() - began
    import resource
    cpu = sum(getattr(resource.getrusage(who), f) for who in
              (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    load = os.getloadavg()
    # The numbers first, so that a failure to draw loses no run.
    with open(os.path.join(a.out, "scaling.json"), "w") as f:
        json.dump({"quick": q, "dims": dims, "seeds": seeds, "grid": grid, "mlp_max_n": mlp_max,
                   "mlp_max_epochs": max_epochs, "target_mse": TARGET_MSE,
                   "target_angle": TARGET_ANGLE, "summary": summary, "time": time_rows,
                   "runs": runs, "seconds": total, "cpu_seconds": cpu,
                   "load_average_at_end": load}, f, indent=1)
    draw(summary, time_rows, a.out, cases, methods, q)
    partial = os.path.join(a.out, "scaling.partial.json")
    if os.path.exists(partial):
        os.remove(partial)
    print(f"\nrows needed (geometric mean over seeds; '>' = not reached by the largest N tried), "
          f"{total:.0f} s wall, {cpu:.0f} s of CPU (this process and its children), load "
          f"average at the end {load[0]:.1f}")
    for case in cases:
        name = case_name(case)
        for method in methods:
            cells = []
            for p in summary[name][method]:
                if p.get("skipped"):
                    cells.append(f"d={p['d']}: not run")
                elif p["censored"]:
                    cells.append(f"d={p['d']}: >{p['max_n']:.0e}")
                else:
                    floor = "<=" if p["floor"] else ""
                    cells.append(f"d={p['d']}: {floor}{math.exp(p['log_mean']):.2e}")
            exp = summary[name]["exponents"].get(method)
            print(f"  {name:14s} {method:8s} exponent {'-' if exp is None else f'{exp:.2f}'}: "
                  + ", ".join(cells))


def redraw(paths, out):
    """The figures and a combined scaling.json from earlier runs' scaling.json files."""
    runs = [json.load(open(p)) for p in paths]
    base = runs[0]
    summary = {}
    # Which file gives each (case, method) its points: only that file's runs of it are kept.
    supplier = {}
    for i, extra in enumerate(runs):
        for case, per in extra["summary"].items():
            into = summary.setdefault(case, {"exponents": {}})
            for method, pts in per.items():
                if method != "exponents":
                    into[method] = pts
                    into["exponents"][method] = per["exponents"].get(method)
                    supplier[(case, method)] = i
    base["runs"] = [r for i, extra in enumerate(runs) for r in extra["runs"]
                    if supplier.get((r["case"], r["method"])) == i]
    base["seconds_per_file"] = [extra.get("seconds") for extra in runs]
    base["dims"] = sorted({p["d"] for per in summary.values() for method, pts in per.items()
                           if method != "exponents" for p in pts})
    methods = [m for m in ("default", "paper", "mlp")
               if any(m in per for per in summary.values())]
    cases = [(c.split()[0], int(c.split("=")[1])) if c.startswith("parity")
             else ("random", int(c.split("[")[1].split(",")[0])) for c in summary]
    os.makedirs(out, exist_ok=True)
    draw(summary, base["time"], out, cases, methods, base["quick"])
    base["summary"] = summary
    base["merged_from"] = [os.path.basename(p) for p in paths]
    with open(os.path.join(out, "scaling.json"), "w") as f:
        json.dump(base, f, indent=1)
    for case, per in summary.items():
        for method in [m for m in methods if m in per]:
            exp = per["exponents"].get(method)
            print(f"  {case:14s} {method:8s} exponent {'-' if exp is None else f'{exp:.2f}'}")


if __name__ == "__main__":
    main()
