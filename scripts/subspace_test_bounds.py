"""The measured distributions behind the bounds of tests/subspace.rs.

Runs `relu-fpt subspace` on each test case's teacher family and sizes for seeds 1..10 (teacher
and samples drawn from the seed) and prints, per case, the dimension found on each seed and the
worst largest principal angle and gradient energy missed. The tests bound their own seed's
figures by 2x the worst of these ten.

Usage: python3 scripts/subspace_test_bounds.py [--seeds 10]
Standard library only. The binary is $RELU_FPT (default target/release/relu-fpt).
"""
import argparse, json, os, subprocess, sys, tempfile

BIN = os.environ.get("RELU_FPT", "target/release/relu-fpt")
CASES = {  # name: flags (same teachers and sizes as tests/subspace.rs)
    "parity k=4, d=48, N=2e5": ["--teacher", "parity", "--d", "48", "--n", "200000"],
    "fan, d=32, N=1e5": ["--teacher", "fan", "--d", "32", "--n", "100000"],
    "deep parity, d=32, N=1e5": ["--teacher", "deep-parity", "--d", "32", "--n", "100000"],
    "composite, d=32, N=1e5": ["--teacher", "composite", "--d", "32", "--n", "100000"],
    "random [3,3], biases, noise 0.1, d=32, N=2e5": [
        "--teacher", "random", "--widths", "3,3", "--bias", "--noise", "0.1",
        "--d", "32", "--n", "200000"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--cases", help="comma-separated substrings of case names")
    a = ap.parse_args()
    print("| case | dims found (seeds 1..) | worst largest angle (rad) | worst gradient energy missed |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "s.json")
        for name, flags in CASES.items():
            if a.cases and not any(c in name for c in a.cases.split(",")):
                continue
            dims, angles, energies = [], [], []
            for seed in range(1, a.seeds + 1):
                cmd = [BIN, "subspace", *flags, "--seed", str(seed), "--backend", "cpu",
                       "--json", "--out", out]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
                rep = json.loads([l for l in p.stdout.splitlines() if l.startswith("{")][-1])
                t = rep["teacher"]
                dims.append(f"{t['found_dim']}/{t['true_dim']}")
                angles.append(t["largest_angle"])
                energies.append(t["gradient_energy_missed"])
                print(f"{name} seed {seed}: {dims[-1]}, angle {angles[-1]:.4f}, "
                      f"energy missed {energies[-1]:.2e}", file=sys.stderr)
            print(f"| {name} | {' '.join(dims)} | {max(angles):.4f} | {max(energies):.2e} |")


if __name__ == "__main__":
    main()
