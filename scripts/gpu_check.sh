#!/usr/bin/env bash
# One hardware check of the GPU backend, side by side with PyTorch on the same card and the CPU
# backend on the same host, written as one JSON report. Built for a lent GPU machine that has no
# Rust (the binaries are built elsewhere and carried) and gives back only a few files.
#
#   scripts/gpu_check.sh [--small] [--out DIR] [--steps "tests ablation table torch learn cpu"]
#
# Inputs (build them where cargo is: `scripts/gpu_check.sh --pack` does it, see below):
#   .dev/relu-fpt        the stripped release binary (RELU_FPT_BIN overrides; else target/release)
#   .dev/tests/*         stripped GPU test binaries, run on the hardware adapter
#   .dev/relu-fpt-base   optional: an older build, timed beside the new one (the ablation)
#   .dev/COMMIT          the commit the binaries were built from
#   .gl/*.deb            optional: the Vulkan loader packages, unpacked first when no
#                        libvulkan.so.1 is present (see docs/gpu-review.md, "Running on a lent
#                        GPU")
# Steps (all by default):
#   tests     the GPU test binaries, each with its own time limit
#   ablation  bench moments at d = 512, K = 1: the base build, then the new one with naga's
#             runtime checks all on, bounds checks only, none (RELU_FPT_GPU_SHADER_CHECKS), the
#             8 x 8 tiles (RELU_FPT_GPU_MOMENT_TILE); K = 64 with the bins sorted on the host
#             and on the device (RELU_FPT_GPU_BINNING)
#   table     bench moments at d in {128, 512, 1024}, K in {1, 64} (N = 1e7, samples generated
#             and kept on the device)
#   torch     scripts/torch_peer.py moments on the same sizes, when python3 has torch and a GPU
#   learn     learn --teacher parity --k 4 --d 512 --n 1e7 --backend gpu, stage lines kept
#   files     the same teacher written to .npy files (2e6 rows to learn from, 1e5 to test):
#             the page cache's read time of x.npy, learn --backend gpu from the files, predict,
#             the test MSE / Var(y)
#   cpu       bench moments --backend cpu at d = 512 (K = 1, 64) and bench peak on this host
# GPU_CHECK_SHADER_CHECKS (default "all bounds none") lists the ablation's shader-check settings.
# Every step has a time limit inside GPU_CHECK_DEADLINE seconds (default 420); a step that
# fails or runs out of time is recorded as such and the next one runs. Results: DIR/report.json
# (one JSON object), DIR/log.txt, and DIR/files.tgz with every raw output (default DIR: $OUT
# when set, else ./gpu-check). --small shrinks every size so that the script runs in a couple
# of minutes on a software adapter (lavapipe), which is how it is rehearsed: its figures say
# nothing about speed.
#
#   scripts/gpu_check.sh --pack [BASE_COMMIT]
# builds the release binary and the GPU test binaries here, strips them into .dev/ (and, given
# BASE_COMMIT, a build of that commit as .dev/relu-fpt-base, from a temporary worktree).
set -uo pipefail
cd "$(dirname "$0")/.."

gpu_tests="gpu gpu_review gpu_trainer moment_tiles sampling"

if [ "${1:-}" = --pack ]; then
  set -e
  mkdir -p .dev/tests
  cargo build --release --locked
  strip -o .dev/relu-fpt target/release/relu-fpt
  for t in $gpu_tests; do
    exe=$(cargo test --release --locked --no-run --test "$t" --message-format=json 2>/dev/null \
      | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])' | tail -1)
    strip -o ".dev/tests/$t" "$exe"
  done
  git rev-parse HEAD >.dev/COMMIT
  git diff --quiet HEAD || echo "+uncommitted" >>.dev/COMMIT
  if [ -n "${2:-}" ]; then
    wt=$(mktemp -d)
    git worktree add --detach "$wt" "$2" >/dev/null
    (cd "$wt" && CARGO_TARGET_DIR="$PWD/../relu-fpt-base-target" cargo build --release --locked)
    strip -o .dev/relu-fpt-base "$wt/../relu-fpt-base-target/release/relu-fpt"
    echo "$2" >.dev/BASE_COMMIT
    git worktree remove --force "$wt"
  fi
  ls -la .dev .dev/tests
  exit 0
fi

small=0
steps="tests ablation table torch learn files cpu"
dir=${OUT:-gpu-check}
while [ $# -gt 0 ]; do
  case "$1" in
    --small) small=1 ;;
    --out) dir="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
has() { case " $steps " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

mkdir -p "$dir"
raw=$(mktemp -d)
pack() { tar czf "$dir/files.tgz" -C "$raw" . 2>/dev/null; }
trap pack EXIT
t0=$(date +%s)
deadline=$((t0 + ${GPU_CHECK_DEADLINE:-420}))
el() { echo $(( $(date +%s) - t0 )); }
log() { echo "[$(el)s] $*" | tee -a "$dir/log.txt" >&2; }
# Seconds for a step: at most $1, keeping $2 for the steps after it.
cap() { local c=$1 left; left=$((deadline - $(date +%s) - $2)); [ "$left" -lt "$c" ] && c=$left; [ "$c" -lt 1 ] && c=1; echo "$c"; }

# The Vulkan loader, where the machine lacks it.
if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp} RUST_LOG=${RUST_LOG:-warn} WGPU_BACKEND=${WGPU_BACKEND:-vulkan}
export RELU_FPT_GPU_RESIDENT_MIB=${RELU_FPT_GPU_RESIDENT_MIB:-100000}

bin=${RELU_FPT_BIN:-}
[ -z "$bin" ] && [ -x .dev/relu-fpt ] && bin=$PWD/.dev/relu-fpt
[ -z "$bin" ] && bin=$PWD/target/release/relu-fpt
base=""
[ -x .dev/relu-fpt-base ] && base=$PWD/.dev/relu-fpt-base
commit=$(cat .dev/COMMIT 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)

"$bin" devices >"$raw/devices.txt" 2>&1
if [ "$small" = 0 ] && ! grep -q "software: false" "$raw/devices.txt"; then
  nv=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  if [ -f "$nv" ]; then
    export VK_DRIVER_FILES=$nv
    "$bin" devices >"$raw/devices.txt" 2>&1
  fi
fi
cat "$raw/devices.txt" >&2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader \
  >"$raw/gpu.txt" 2>/dev/null || echo "" >"$raw/gpu.txt"

if [ "$small" = 1 ]; then
  n=20000; dims="16 32 48"; ad=32; ln=20000; ld=16; learn_extra=(--descent-epochs 2 --polish-epochs 1)
  fn=20000; ft=2000
else
  n=10000000; dims="128 512 1024"; ad=512; ln=10000000; ld=512; learn_extra=()
  fn=2000000; ft=100000
fi

# Runs "$@" for at most $1 s, stdout to $2, stderr to $3; echoes the exit status (124: timed out).
timed() { local c=$1 o=$2 e=$3; shift 3; timeout -k 5 "$c" "$@" >"$o" 2>"$e"; echo $?; }
bench_line() { # label, cap, reserve, binary, args...
  local label=$1 c; c=$(cap "$2" "$3"); shift 3
  local s; s=$(timed "$c" "$raw/b.out" "$raw/b.err" "$@" --json)
  if [ "$s" = 0 ] && [ -s "$raw/b.out" ]; then
    printf '{"label":"%s","result":%s}\n' "$label" "$(tail -1 "$raw/b.out")" >>"$raw/bench.jsonl"
  else
    python3 -c 'import json,sys; print(json.dumps({"label": sys.argv[1], "status": int(sys.argv[2]), "error": sys.argv[3]}))' \
      "$label" "$s" "$(tail -3 "$raw/b.err")" >>"$raw/bench.jsonl"
  fi
  log "$label: exit $s $(grep -oE '"seconds":[0-9.e-]+' "$raw/b.out" | head -1)"
}

if has tests; then
  log "tests"
  # Test binaries start the CLI by the path it had where they were built.
  want=$(grep -aoE '/[A-Za-z0-9_./-]*/target/release/relu-fpt' .dev/tests/gpu 2>/dev/null | head -1)
  if [ -n "$want" ] && [ ! -e "$want" ]; then mkdir -p "$(dirname "$want")" && ln -sf "$bin" "$want"; fi
  for t in $gpu_tests; do
    [ -x ".dev/tests/$t" ] || continue
    c=$(cap 60 300)
    s=$(timed "$c" "$raw/test_$t.txt" "$raw/test_$t.txt" ".dev/tests/$t" --test-threads=4)
    log "test $t: exit $s $(grep -E '^test result' "$raw/test_$t.txt" | tail -1)"
    grep -E '^test .* FAILED$' "$raw/test_$t.txt" | head -5 | tee -a "$dir/log.txt" >&2
  done
  pack
fi

if has ablation; then
  log "ablation d=$ad K=1"
  [ -n "$base" ] && bench_line "base build" 60 240 "$base" bench moments --backend gpu --n "$n" --d "$ad" --bins 1 --runs 5
  for checks in ${GPU_CHECK_SHADER_CHECKS:-all bounds none}; do
    RELU_FPT_GPU_SHADER_CHECKS=$checks bench_line "checks $checks" 40 200 "$bin" bench moments --backend gpu --n "$n" --d "$ad" --bins 1 --runs 5
  done
  for tile in 16,8,16 16,8,8; do
    RELU_FPT_GPU_MOMENT_TILE=$tile bench_line "tile $tile" 30 180 "$bin" bench moments --backend gpu --n "$n" --d "$ad" --bins 1 --runs 5
  done
  for where in host device; do
    RELU_FPT_GPU_BINNING=$where bench_line "K=64 binning on the $where" 30 180 "$bin" bench moments --backend gpu --n "$n" --d "$ad" --bins 64 --runs 5
  done
  pack
fi

if has table; then
  log "table"
  for d in $dims; do for k in 1 64; do
    bench_line "gpu d=$d K=$k" 40 150 "$bin" bench moments --backend gpu --n "$n" --d "$d" --bins "$k" --runs 5
  done; done
  pack
fi

if has torch && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  log "torch"
  specs=""; for d in $dims; do specs="$specs $d:1 $d:64"; done
  c=$(cap 90 100)
  PYTHONUNBUFFERED=1 timeout -k 5 "$c" python3 scripts/torch_peer.py moments "$n" $specs >"$raw/torch.jsonl" 2>"$raw/torch.err"
  log "torch: exit $?"
  pack
fi

if has learn; then
  log "learn gpu"
  c=$(cap 150 60)
  s=$(timed "$c" "$raw/learn_gpu.json" "$raw/learn_gpu.err" "$bin" learn --teacher parity --k 4 --d "$ld" --n "$ln" \
    --backend gpu --seed 1 --json --out "$raw/model_gpu.json" "${learn_extra[@]}")
  log "learn gpu: exit $s"; tail -12 "$raw/learn_gpu.err" | tee -a "$dir/log.txt" >&2
  pack
fi

if has files; then
  log "files"
  w=$(mktemp -d)
  c=$(cap 60 60)
  timeout -k 5 "$c" "$bin" generate --teacher parity --k 4 --d "$ld" --n $((fn + ft)) --seed 7 --out "$w/all" >/dev/null 2>"$raw/generate.err"
  log "generate: exit $?"
  python3 - "$w" "$fn" <<'PY' 2>>"$raw/generate.err"
import sys, numpy as np
w, n = sys.argv[1], int(sys.argv[2])
x = np.load(f"{w}/all/x.npy", mmap_mode="r"); y = np.load(f"{w}/all/y.npy", mmap_mode="r")
np.save(f"{w}/train_x.npy", x[:n]); np.save(f"{w}/train_y.npy", y[:n])
np.save(f"{w}/test_x.npy", x[n:]); np.save(f"{w}/test_y.npy", y[n:])
PY
  rm -rf "$w/all"
  # The page cache's read time of the training x, twice (the second is the cached figure).
  for k in 1 2; do
    t1=$(date +%s.%N); cat "$w/train_x.npy" >/dev/null; t2=$(date +%s.%N)
    awk -v a="$t1" -v b="$t2" -v n="$(stat -c %s "$w/train_x.npy")" \
      'BEGIN { printf "{\"cat_seconds\": %.4f, \"bytes\": %d}\n", b - a, n }' >>"$raw/files.jsonl"
  done
  c=$(cap 90 30)
  t1=$(date +%s.%N)
  s=$(timed "$c" "$raw/learn_files.json" "$raw/learn_files.err" "$bin" learn --x "$w/train_x.npy" --y "$w/train_y.npy" \
    --backend gpu --seed 1 --json --out "$w/model.json" "${learn_extra[@]}")
  t2=$(date +%s.%N)
  log "learn files: exit $s in $(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1f", b - a }') s"; tail -14 "$raw/learn_files.err" | tee -a "$dir/log.txt" >&2
  if [ "$s" = 0 ]; then
    "$bin" predict --model "$w/model.json" --x "$w/test_x.npy" --out "$w/p.npy" --backend gpu 2>>"$raw/learn_files.err"
    python3 -c "
import numpy as np; p = np.load('$w/p.npy').reshape(-1); y = np.load('$w/test_y.npy').reshape(-1)
print('{\"learn_seconds\": %.2f, \"test_mse_over_var\": %.3g}' % ($t2 - $t1, np.mean((p - y) ** 2) / y.var()))" >>"$raw/files.jsonl"
    log "files: $(tail -1 "$raw/files.jsonl")"
  fi
  rm -rf "$w"
  pack
fi

if has cpu; then
  log "cpu"
  "$bin" bench peak --json >"$raw/peak.json" 2>/dev/null
  for k in 1 64; do
    bench_line "cpu d=$ad K=$k" 60 0 "$bin" bench moments --backend cpu --n "$n" --d "$ad" --bins "$k" --runs 5
  done
  pack
fi

# One report.
python3 - "$raw" "$dir/report.json" "$commit" "$(el)" "$small" <<'PY'
import json, os, sys, datetime
raw, out, commit, secs, small = sys.argv[1:6]
def lines(name):
    p = os.path.join(raw, name)
    if not os.path.exists(p):
        return []
    rows = []
    for l in open(p):
        l = l.strip()
        if l.startswith("{"):
            try:
                rows.append(json.loads(l))
            except ValueError:
                pass
    return rows
def text(name):
    p = os.path.join(raw, name)
    return open(p, errors="replace").read().strip() if os.path.exists(p) else None
tests = {}
for f in sorted(os.listdir(raw)):
    if f.startswith("test_"):
        t = open(os.path.join(raw, f), errors="replace").read()
        tests[f[5:-4]] = {"summary": [l for l in t.splitlines() if l.startswith("test result")],
                          "failed": [l for l in t.splitlines() if l.endswith("FAILED")]}
learn = None
if os.path.exists(os.path.join(raw, "learn_gpu.json")):
    l = lines("learn_gpu.json")
    learn = {"report": l[-1] if l else None, "stderr_tail": (text("learn_gpu.err") or "")[-3000:]}
report = {
    "format": "relu-fpt/gpu-check", "version": 2, "small": small == "1",
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "commit": commit, "seconds": int(secs),
    "gpu": text("gpu.txt"), "devices": text("devices.txt"),
    "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None),
    "cores": os.cpu_count(),
    "tests": tests, "bench": lines("bench.jsonl"), "torch": lines("torch.jsonl"),
    "cpu_peak": (lines("peak.json") or [None])[0], "learn": learn,
    "files": lines("files.jsonl"),
    "learn_files": {"report": (lines("learn_files.json") or [None])[-1],
                    "stderr_tail": (text("learn_files.err") or "")[-3000:]},
}
json.dump(report, open(out, "w"), indent=1)
PY
log "wrote $dir/report.json"
# A short table last (what a caller sees at the end of the output).
python3 - "$dir/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for b in r["bench"]:
    res = b.get("result")
    if res:
        print(f'{b["label"]:>22}: {res["seconds"]:.4f} s  {res["gflops"]:8.0f} GFLOP/s')
    else:
        print(f'{b["label"]:>22}: status {b.get("status")}')
for t in r["torch"]:
    print(f'{"torch " + t["precision"] + " d=%d K=%d" % (t["d"], t["bins"]):>22}: {t["seconds"]:.4f} s  {t["gflops"]:8.0f} GFLOP/s')
for f in r.get("files", []):
    print(f'{"files":>22}: {json.dumps(f)}')
for name in ("learn", "learn_files"):
    l = r.get(name) or {}
    if l.get("report"):
        print(f'{name:>22}: validation MSE/Var {l["report"].get("validation_mse", 0) / max(l["report"].get("validation_var", 1), 1e-300):.3g}')
    for line in (l.get("stderr_tail") or "").splitlines()[-12:]:
        print(f'{"":>22}  {line}')
for name, t in r["tests"].items():
    print(f'{"test " + name:>22}: {" ".join(t["summary"])[-80:]} {len(t["failed"])} failed')
PY
