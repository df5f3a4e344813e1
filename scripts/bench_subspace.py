"""Subspace benchmark: filtered PCA against SAVE handed the true dimension.

For each teacher family, backend and seed, `relu-fpt subspace` runs three times on the same
synthetic instance (same teacher, same samples): filtered PCA finding the dimension itself, the
same without its Gauss-Newton refine steps (--refine-steps 0, for the angle of the rounds
alone), then SAVE with --dim set to the teacher's true dimension (read from the filtered run's
teacher block). The
table gives medians over seeds; the targets: largest principal angle at
most 0.8x SAVE's, and gradient energy missed at most 1e-3.

Usage: python3 scripts/bench_subspace.py [--n 1000000] [--d 128] [--families parity,fan,...]
         [--backends cpu,gpu] [--seeds 1,2,3] [--raw rows.jsonl]
Python standard library only. The binary is $RELU_FPT (default target/release/relu-fpt).
Prints a Markdown table on stdout and progress on stderr.
"""
import argparse, json, os, platform, shlex, statistics, subprocess, sys, tempfile

DEFAULT_BIN = "target/release/relu-fpt"
BIN = os.environ.get("RELU_FPT", DEFAULT_BIN)
FAMILIES = {  # the built-in teachers, as in scripts/bench_families.py
    "parity": ["--teacher", "parity", "--k", "4"],
    "fan": ["--teacher", "fan", "--m", "4"],
    "deep-parity": ["--teacher", "deep-parity", "--k", "3"],
    "composite": ["--teacher", "composite"],
    "random": ["--teacher", "random", "--widths", "4,4", "--bias", "--noise", "0.05"],
}
RATIO_TARGET = 0.8
ENERGY_TARGET = 1e-3


def subspace(flags, out):
    """One `relu-fpt subspace --json` run; returns its parsed report, or None if it failed."""
    cmd = [BIN, "subspace", *flags, "--json", "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        print(f"failed: {shlex.join(cmd)}: {last}", file=sys.stderr)
        return None
    # The report is the one JSON line; anything else on stdout (notices) is skipped.
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(f"no JSON line from: {shlex.join(cmd)}", file=sys.stderr)
    return None


def median(values):
    """Median of the values that are numbers; None when there are none (all runs failed)."""
    vals = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def check(v, target):
    return "" if v is None else (" (ok)" if v <= target else " (over)")


def distinct(values):
    """One value when all seeds agree, else the list: dimensions differing across seeds show."""
    vals = [str(v) for v in values if v is not None]
    return ",".join(dict.fromkeys(vals)) if len(set(vals)) == 1 else ",".join(vals) or "n/a"


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarise(runs):
    """Table row for one (family, backend) from its per-seed runs."""
    filt = [r["filtered"] for r in runs]
    rounds_only = [r["rounds_only"] for r in runs]
    save = [r["save"] for r in runs]
    teach = lambda rep, key: rep["teacher"][key] if rep else None
    ratios = []
    for f, s in zip(filt, save):
        fa, sa = teach(f, "largest_angle"), teach(s, "largest_angle")
        if fa is not None and sa is not None:
            ratios.append(fa / sa if sa > 0 else (0.0 if fa == 0 else float("inf")))
    # Seconds of round i: median over the seeds that ran a round i (round counts may differ).
    per_round = []
    for i in range(max((len(f["rounds"]) for f in filt if f), default=0)):
        per_round.append(median([f["rounds"][i]["seconds"] for f in filt if f and len(f["rounds"]) > i]))
    per_step = []
    for i in range(max((len(f["refine"]) for f in filt if f), default=0)):
        per_step.append(median([f["refine"][i]["seconds"] for f in filt if f and len(f["refine"]) > i]))
    ratio = median(ratios)
    e_filt = median([teach(f, "gradient_energy_missed") for f in filt])
    return [
        distinct([teach(f, "true_dim") for f in filt]),
        distinct([teach(f, "found_dim") for f in filt]),
        fmt(median([teach(f, "largest_angle") for f in filt])),
        fmt(median([teach(f, "largest_angle") for f in rounds_only])),
        fmt(median([teach(s, "largest_angle") for s in save])),
        fmt(ratio, ".2f") + check(ratio, RATIO_TARGET),
        fmt(e_filt, ".2e") + check(e_filt, ENERGY_TARGET),
        fmt(median([teach(s, "gradient_energy_missed") for s in save]), ".2e"),
        ", ".join(fmt(s, ".2f") for s in per_round) or "n/a",
        ", ".join(fmt(s, ".2f") for s in per_step) or "n/a",
        fmt(median([f["seconds"] for f in filt if f]), ".2f"),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="samples per instance")
    ap.add_argument("--d", type=int, default=128, help="input dimension")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated teacher families")
    ap.add_argument("--backends", default="cpu", help="comma-separated: cpu, gpu")
    ap.add_argument("--seeds", default="1", help="comma-separated seeds (teacher and samples)")
    ap.add_argument("--raw", metavar="PATH", help="also write every run's JSON report here, one per line")
    a = ap.parse_args()
    families = a.families.split(",")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; choose from {','.join(FAMILIES)}")
    backends = a.backends.split(",")
    if any(b not in ("cpu", "gpu") for b in backends):
        ap.error("--backends takes cpu and/or gpu")
    seeds = [int(s) for s in a.seeds.split(",")]

    raw, table, backend_names = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "subspace.json")
        for fam in families:
            for backend in backends:
                runs = []
                for seed in seeds:
                    base = [*FAMILIES[fam], "--d", str(a.d), "--n", str(a.n), "--seed", str(seed),
                            "--backend", backend]
                    filt = subspace(base + ["--method", "filtered"], out)
                    rounds_only = subspace(base + ["--method", "filtered", "--refine-steps", "0"], out)
                    save = None
                    if filt:
                        save = subspace(base + ["--method", "save", "--dim",
                                                str(filt["teacher"]["true_dim"])], out)
                    runs.append({"filtered": filt, "rounds_only": rounds_only, "save": save})
                    for method, rep in (("filtered", filt), ("rounds-only", rounds_only),
                                        ("save", save)):
                        raw.append({"family": fam, "backend": backend, "seed": seed,
                                    "method": method, "d": a.d, "n": a.n, "report": rep})
                        if rep and rep["backend"] not in backend_names:
                            backend_names.append(rep["backend"])
                    print(f"{fam} {backend} seed {seed}: filtered angle "
                          f"{fmt(filt and filt['teacher']['largest_angle'])}, SAVE "
                          f"{fmt(save and save['teacher']['largest_angle'])}",
                          file=sys.stderr, flush=True)
                table.append([fam, backend, *summarise(runs)])
    if a.raw:
        with open(a.raw, "w") as f:
            for row in raw:
                f.write(json.dumps(row) + "\n")

    print(f"d = {a.d}, N = {a.n}, seeds {','.join(map(str, seeds))} (medians over seeds); "
          f"filtered PCA finds the dimension, SAVE is handed the true one.\n")
    print("| family | backend | true dim | found dim | filtered angle (rad) | rounds only | "
          f"SAVE angle | ratio (target <= {RATIO_TARGET}) | gradient energy missed, filtered "
          f"(target <= {ENERGY_TARGET:g}) | SAVE's | seconds per round | seconds per refine "
          "step | total seconds |")
    print("|" + "---|" * 13)
    for row in table:
        print("| " + " | ".join(row) + " |")
    env = "" if BIN == DEFAULT_BIN else f"RELU_FPT={shlex.quote(BIN)} "
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} threads; backends as reported: "
          f"{'; '.join(backend_names) or 'n/a'}.")
    cmd = shlex.join(["python3", "scripts/bench_subspace.py", *sys.argv[1:]])
    print(f"Command: `{env}{cmd}`")


if __name__ == "__main__":
    main()
