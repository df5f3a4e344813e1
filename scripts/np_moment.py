"""The numpy peer of `relu-fpt bench moments`: numpy's X^T X (OpenBLAS sgemm/ssyrk) on an
N x D float32 matrix of standard normals, the computation a user would otherwise reach for.

Usage: python3 scripts/np_moment.py N D [RUNS]   (needs numpy: pip install numpy)

Prints one JSON line with the fields `relu-fpt bench moments --json` uses:
{"peer": "numpy", "n": N, "d": D, "seconds": median, "gflops": N*D*(D+1)/seconds/1e9, "runs": RUNS}
One warm-up, then the median of RUNS (default 5) timed products, as relu-fpt does; data
generation is not timed. Quote ratios measured side by side in one run: an absolute time holds
only for the machine and moment it was taken on.
"""
import json
import os
import statistics
import sys
import time

# Some machines set these to work around old OpenBLAS bugs; they slow a current numpy's
# OpenBLAS (which reads them when it loads), so drop them before importing numpy.
for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
    os.environ.pop(var, None)

import numpy as np  # noqa: E402

n, d = int(sys.argv[1]), int(sys.argv[2])
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
m = x.T @ x  # warm-up: threads started, pages touched
times = []
for _ in range(runs):
    t = time.perf_counter()
    m = x.T @ x
    times.append(time.perf_counter() - t)
seconds = statistics.median(times)
print(json.dumps({"peer": "numpy", "n": n, "d": d, "seconds": round(seconds, 6),
                  "gflops": round(n * d * (d + 1) / seconds / 1e9, 2), "runs": runs}))
