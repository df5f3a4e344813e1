"""The streaming trainer's figures: memory against N, predict against reading the file, the
label-noise teacher with every row against the old 1e5-row cap, and learn's time.

Parts (--parts, comma separated):
  memory   peak RSS (GNU time's "Maximum resident set size") and seconds of learn --stream and
           learn (rows held in memory), and peak RSS of subspace, predict and eval, on the
           parity teacher at d = 128 for each N in --ns: the bound in README.
  predict  median wall seconds of `relu-fpt predict` on the largest N against `cat x.npy >
           /dev/null` (the file read once from the page cache, after a warm-up read).
  noise    the random [4, 4] teacher with label noise of 25% of the teacher's variance
           (sd 0.5), d = 48, N = 5e5 training rows and 1e5 fresh test rows: learn with every row
           and with --max-train-rows 100000 (the old cap of the fitting stages); error against
           the noiseless test labels (MSE / Var of the teacher's outputs).
  time     learn at N = 1e6, d = 128 (parity): median wall seconds over --repeats runs, and with
           --baseline BIN the same for another build, the two run alternately.
  stages   learn on each benchmark teacher at N = 1e6 (--stage-n), d = 128: the validation
           MSE/Var after each stage, the stage the model came from and its dimension.

Usage: python3 scripts/bench_trainer.py [--parts memory,predict,noise,time,stages]
         [--ns 1000000,3000000]
         [--repeats 3] [--baseline path/to/other/relu-fpt] [--dir DIR]
Needs numpy and GNU time (/usr/bin/time). Prints Markdown tables.
"""
import argparse, os, re, statistics, subprocess, tempfile, time
import numpy as np

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")


def run(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def timed(cmd):
    """(wall seconds, peak RSS in MB) of one run under GNU time."""
    t = time.perf_counter()
    p = run(["/usr/bin/time", "-v", *cmd])
    secs = time.perf_counter() - t
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return secs, rss / 1024


def generate(out, flags, n, seed=1):
    if not os.path.exists(os.path.join(out, "y.npy")):
        run([BIN, "generate", *flags, "--n", str(n), "--seed", str(seed), "--out", out])
    return out


def parity(base, n):
    flags = ["--teacher", "parity", "--d", "128", "--k", "4"]
    return generate(os.path.join(base, f"parity-{n}"), flags, n)


def memory(base, ns):
    print("| N | learn --stream RSS (MiB) | learn --stream s | learn RSS (MiB) | learn s "
          "| subspace RSS (MiB) | predict RSS (MiB) | eval RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for n in ns:
        data = parity(base, n)
        x, y = os.path.join(data, "x.npy"), os.path.join(data, "y.npy")
        model = os.path.join(base, f"model-{n}.json")
        learn = [BIN, "learn", "--x", x, "--y", y, "--out", model, "--backend", "cpu"]
        ss, sm = timed([*learn, "--stream"])
        ls, lr = timed(learn)
        _, sr = timed([BIN, "subspace", "--x", x, "--y", y, "--out",
                       os.path.join(base, "sub.json"), "--backend", "cpu"])
        _, pr = timed([BIN, "predict", "--model", model, "--x", x, "--out",
                       os.path.join(base, "pred.npy"), "--backend", "cpu"])
        _, er = timed([BIN, "eval", "--model", model, "--x", x, "--y", y, "--backend", "cpu"])
        print(f"| {n:.0e} | {sm:.0f} | {ss:.1f} | {lr:.0f} | {ls:.1f} | {sr:.0f} | {pr:.0f} | {er:.0f} |")


def predict(base, n, repeats):
    data = parity(base, n)
    x = os.path.join(data, "x.npy")
    model = os.path.join(base, f"model-{n}.json")
    if not os.path.exists(model):
        run([BIN, "learn", "--x", x, "--y", os.path.join(data, "y.npy"), "--out", model,
             "--backend", "cpu"])
    subprocess.run(f"cat {x} > /dev/null", shell=True, check=True)
    cat, pred = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(f"cat {x} > /dev/null", shell=True, check=True)
        cat.append(time.perf_counter() - t)
        t = time.perf_counter()
        run([BIN, "predict", "--model", model, "--x", x, "--out",
             os.path.join(base, "pred.npy"), "--backend", "cpu"])
        pred.append(time.perf_counter() - t)
    c, p = statistics.median(cat), statistics.median(pred)
    print(f"| rows | d | cat x.npy (s) | predict (s) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {n:.0e} | 128 | {c:.2f} | {p:.2f} | {p / c:.2f} |")


def noise(base):
    n, n_test = 500_000, 100_000
    flags = ["--teacher", "random", "--widths", "4,4", "--d", "48", "--k", "4", "--noise", "0.5"]
    every = generate(os.path.join(base, "noise-all"), flags, n + n_test)
    xa = np.load(os.path.join(every, "x.npy"), mmap_mode="r")
    ya = np.load(os.path.join(every, "y.npy"), mmap_mode="r")
    train, test = os.path.join(base, "noise-train"), os.path.join(base, "noise-test")
    os.makedirs(train, exist_ok=True)
    os.makedirs(test, exist_ok=True)
    np.save(os.path.join(train, "x.npy"), np.ascontiguousarray(xa[:n]))
    np.save(os.path.join(train, "y.npy"), np.ascontiguousarray(ya[:n]))
    np.save(os.path.join(test, "x.npy"), np.ascontiguousarray(xa[n:]))
    clean = os.path.join(test, "clean.npy")
    run([BIN, "predict", "--model", os.path.join(every, "teacher.json"), "--x",
         os.path.join(test, "x.npy"), "--out", clean, "--backend", "cpu"])
    c = np.load(clean)
    print("| training rows in the fitting stages | model dimension | test MSE/Var (noiseless labels) | seconds |")
    print("|---|---|---|---|")
    for label, extra in [("every row (4e5)", []), ("first 1e5 (--max-train-rows 100000)",
                                                     ["--max-train-rows", "100000"])]:
        model = os.path.join(base, "noise-model.json")
        t = time.perf_counter()
        out = run([BIN, "learn", "--x", os.path.join(train, "x.npy"), "--y",
                   os.path.join(train, "y.npy"), "--out", model, "--backend", "cpu", "--json",
                   *extra]).stdout
        secs = time.perf_counter() - t
        import json
        dim = json.loads(out)["model_dimension"]
        pred = os.path.join(base, "noise-pred.npy")
        run([BIN, "predict", "--model", model, "--x", os.path.join(test, "x.npy"), "--out", pred,
             "--backend", "cpu"])
        p = np.load(pred)
        print(f"| {label} | {dim} | {np.mean((p - c) ** 2) / np.var(c):.3g} | {secs:.1f} |")


def learn_time(base, repeats, baseline):
    data = parity(base, 1_000_000)
    cmd = lambda b: [b, "learn", "--x", os.path.join(data, "x.npy"), "--y",
                     os.path.join(data, "y.npy"), "--out", os.path.join(base, "t.json"),
                     "--backend", "cpu"]
    bins = [BIN] + ([baseline] if baseline else [])
    times = {b: [] for b in bins}
    for _ in range(repeats):
        for b in bins:
            t = time.perf_counter()
            run(cmd(b))
            times[b].append(time.perf_counter() - t)
    print("| build | learn s (median) |")
    print("|---|---|")
    for b in bins:
        print(f"| {b} | {statistics.median(times[b]):.1f} |")
    if baseline:
        r = statistics.median(times[BIN]) / statistics.median(times[baseline])
        print(f"\nratio this build / baseline: {r:.2f}")


FAMILIES = {
    "parity (A), k = 4": ["--teacher", "parity", "--k", "4"],
    "fan (B), m = 4": ["--teacher", "fan", "--m", "4"],
    "deep parity (C), k = 3": ["--teacher", "deep-parity", "--k", "3"],
    "composite (D)": ["--teacher", "composite"],
    "random [4, 4], biases, noise 0.05": ["--teacher", "random", "--widths", "4,4", "--bias",
                                          "--noise", "0.05"],
}


def stages(base, n):
    import json
    names = ["enumerate", "sphere-net", "descent", "polish"]
    print("| teacher | " + " | ".join(names) + " | final stage | dimension (found, final) | seconds |")
    print("|---" * (len(names) + 4) + "|")
    for label, flags in FAMILIES.items():
        slug = label.split(" ")[0]
        data = generate(os.path.join(base, f"stages-{slug}-{n}"), [*flags, "--d", "128"], n)
        t = time.perf_counter()
        out = run([BIN, "learn", "--x", os.path.join(data, "x.npy"), "--y",
                   os.path.join(data, "y.npy"), "--out", os.path.join(base, "stages.json"),
                   "--backend", "cpu", "--json"]).stdout
        secs = time.perf_counter() - t
        j = json.loads(out)
        var = j["validation_var"]
        by = {s["stage"]: s["validation_mse"] for s in j["stages"]}
        cells = [f"{by[s] / var:.2g}" if by.get(s) is not None else "-" for s in names]
        print(f"| {label} | " + " | ".join(cells) +
              f" | {j['final_stage']} | {j['dimension']}, {j['model_dimension']} | {secs:.0f} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="memory,predict,noise,time,stages")
    ap.add_argument("--ns", default="1000000,3000000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", default=None)
    ap.add_argument("--stage-n", type=int, default=1_000_000)
    ap.add_argument("--dir", default=None, help="keep generated data here (default: temporary)")
    a = ap.parse_args()
    ns = [int(v) for v in a.ns.split(",")]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                if l.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} threads\n")
    with tempfile.TemporaryDirectory() as tmp:
        base = a.dir or tmp
        os.makedirs(base, exist_ok=True)
        parts = a.parts.split(",")
        if "memory" in parts:
            memory(base, ns)
            print()
        if "predict" in parts:
            predict(base, max(ns), a.repeats)
            print()
        if "noise" in parts:
            noise(base)
            print()
        if "time" in parts:
            learn_time(base, a.repeats, a.baseline)
            print()
        if "stages" in parts:
            stages(base, a.stage_n)


if __name__ == "__main__":
    main()
