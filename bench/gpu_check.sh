#!/usr/bin/env bash
# One check of rnn-gpu on a GPU machine, from the source tree (PYTHONPATH=., no network):
#
#   1. environment   nvidia-smi, driver, CuPy and cuBLAS versions, what `auto` picks
#   2. capture       a CUDA-Graph step (rnn_gpu.bench.capture.capture_probe) replayed and
#                    compared with the eager step; pass or fail, the script goes on
#   3. gpu tests     python -m pytest -q -m gpu tests, junit XML and a one-line summary
#   4. step bench    python -m rnn_gpu bench --only steps --backend cupy --peers torch at
#                    (64,32,256,65) (35,20,200,10000) (50,64,1024,1024): eager and graphed
#                    steps beside PyTorch (cuDNN on CUDA), validated first
#   5. cells bench   python bench/cells.py --device cuda: GRU and LSTM steps (graphed and
#                    eager) beside PyTorch's nn.GRU / nn.LSTM on cuDNN, validated first
#   6. record        the GPU test counts appended to the bench results as one JSON line
#
# Every step runs under its own timeout; a step that fails or times out does not stop
# the next. The timeouts add up to 5 minutes (2 with --quick, which runs the GPU tests
# not marked slow and the bench with --quick). Output, in OUTDIR (at most 8 files, no
# folders):
#
#   gpu_check.log    everything printed
#   summary.txt      one line per step: ok, FAILED or TIMEOUT
#   gpu-tests.txt    "gpu tests: N passed, N failed, N skipped"
#   gpu-tests.xml    pytest's junit XML
#   <gpu>.jsonl      the bench rows, then the gpu-tests row (<gpu>: nvidia-h200, ...)
#
# Exit status: 0 when every step passed, 1 when one did not, 2 on a usage error.
# --dry-run prints the steps and their timeouts and runs nothing (no GPU needed).
set -u

usage() {
    echo "usage: bench/gpu_check.sh OUTDIR [--quick] [--dry-run]" >&2
    exit 2
}

OUT=""
QUICK=0
DRY=0
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $a" >&2; usage ;;
        *) if [ -n "$OUT" ]; then echo "gpu_check.sh: one OUTDIR, got $OUT and $a" >&2; usage; fi
           OUT=$a ;;
    esac
done
[ -n "$OUT" ] || usage
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then
    echo "gpu_check.sh: OUTDIR $OUT exists and is not a folder" >&2
    exit 2
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONPATH=.
PY=${PYTHON:-python}
export PY

# Seconds per step: environment, capture probe, GPU tests, step bench, cells bench, record.
if [ "$QUICK" = 1 ]; then
    LIMITS=(15 25 45 18 14 3)
    TEST_MARK="gpu and not slow"
    BENCH_QUICK=(--quick)
    CELLS=(--reps 5 --configs gru1,lstm1 --shapes 64x32x256x65)
else
    LIMITS=(20 40 120 77 40 3)
    TEST_MARK="gpu"
    BENCH_QUICK=()
    CELLS=(--reps 10)
fi
SHAPES="64,32,256,65;35,20,200,10000;50,64,1024,1024"

if [ "$DRY" = 1 ]; then
    LOG=/dev/null
    GPU=gpu
else
    mkdir -p "$OUT" || exit 2
    OUT=$(cd "$OUT" && pwd)
    LOG="$OUT/gpu_check.log"
    : > "$LOG"
    : > "$OUT/summary.txt"
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 |
          tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//')
    [ -n "$GPU" ] || GPU=gpu
fi
RESULTS="$OUT/$GPU.jsonl"
FAILED=0

say() { echo "$*" | tee -a "$LOG"; }

# step NAME LIMIT COMMAND...: run COMMAND under `timeout LIMIT`, log it, record the outcome.
step() {
    local name=$1 limit=$2
    shift 2
    local shown="" a
    for a in "$@"; do  # a Python snippet shows as its first line
        case "$a" in
            *$'\n'*) shown+=" '${a%%$'\n'*} ...'" ;;
            *[[:space:]\;]*) shown+=" '$a'" ;;
            *) shown+=" $a" ;;
        esac
    done
    say "== $name (timeout ${limit} s):$shown"
    [ "$DRY" = 1 ] && return 0
    local t0=$SECONDS rc status
    timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
        status=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status=TIMEOUT
    else
        status=FAILED
    fi
    [ "$status" = ok ] || FAILED=1
    say "-- $name: $status (exit $rc, $((SECONDS - t0)) s)"
    echo "$name: $status (exit $rc, $((SECONDS - t0)) s)" >> "$OUT/summary.txt"
}

read -r -d '' ENVIRONMENT <<'EOF'
# environment: every command runs; the step fails if one of them does
rc=0
nvidia-smi || rc=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || rc=1
"$PY" - <<'PY' || rc=1
import cupy
print("cupy", cupy.__version__, "| CUDA runtime", cupy.cuda.runtime.runtimeGetVersion(),
      "| CUDA driver", cupy.cuda.runtime.driverGetVersion())
try:
    from cupy_backends.cuda.libs import cublas
    print("cublas", cublas.getVersion(cupy.cuda.device.get_cublas_handle()))
except Exception as e:  # an older or newer CuPy: its own report names cuBLAS
    print(f"cublas: getVersion failed ({type(e).__name__}: {e}); cupy.show_config():")
    cupy.show_config()
PY
"$PY" -m rnn_gpu info || rc=1
exit $rc
EOF

read -r -d '' CAPTURE <<'EOF'
# capture probe: a replayed CUDA graph of the step against the eager step
import sys

import rnn_gpu
from rnn_gpu.bench.capture import capture_probe

ok, report = capture_probe(rnn_gpu.get_backend("cupy"))
print(report)
sys.exit(0 if ok else 1)
EOF

read -r -d '' RECORD <<'EOF'
# record: the GPU test counts, a line of their own and a row of the results
import datetime, json, sys
import xml.etree.ElementTree as ET

from rnn_gpu.backend import get_backend
from rnn_gpu.bench.records import collect_versions

xml_path, results, summary, command = sys.argv[1:5]
try:
    root = ET.parse(xml_path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites)
         for k in ("tests", "failures", "errors", "skipped")}
    problem = None
except Exception as e:  # no XML: pytest did not finish
    n = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    problem = f"no test results ({type(e).__name__}: {e})"
passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
failed = n["failures"] + n["errors"]
line = (f"gpu tests: {passed} passed, {failed} failed, {n['skipped']} skipped"
        + (f"; {problem}" if problem else ""))
print(line)
with open(summary, "w", encoding="utf-8") as f:
    f.write(line + "\n")
try:
    device = get_backend("cupy").device
except Exception as e:
    device = f"cupy unavailable ({type(e).__name__})"
row = {"name": "gpu-tests", "kind": "gpu-tests", "device": device, "backend": "cupy",
       "dtype": "", "shape": "",
       "status": "ok" if passed and not failed and not problem else "FAILED",
       "passed": passed, "failed": failed, "skipped": n["skipped"], "reason": problem,
       "median_ms": None, "min_ms": None, "max_ms": None,
       "peer": None, "peer_median_ms": None, "speedup": None,
       "versions": collect_versions(), "command": command,
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
with open(results, "a", encoding="utf-8") as f:
    f.write(json.dumps(row) + "\n")
sys.exit(0 if row["status"] == "ok" else 1)
EOF

say "gpu_check.sh: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT, output in $OUT" \
    "($([ "$QUICK" = 1 ] && echo quick || echo full))"
step environment "${LIMITS[0]}" bash -c "$ENVIRONMENT"
step capture "${LIMITS[1]}" "$PY" -c "$CAPTURE"
[ "$DRY" = 1 ] || rm -f "$OUT/gpu-tests.xml"
step "gpu tests" "${LIMITS[2]}" "$PY" -m pytest -q -p no:cacheprovider -m "$TEST_MARK" tests \
    --junitxml="$OUT/gpu-tests.xml"
[ "$DRY" = 1 ] || rm -f "$RESULTS"
step "step bench" "${LIMITS[3]}" "$PY" -m rnn_gpu bench --only steps --backend cupy \
    --peers torch --shapes "$SHAPES" ${BENCH_QUICK[@]+"${BENCH_QUICK[@]}"} --out "$RESULTS"
step "cells bench" "${LIMITS[4]}" "$PY" bench/cells.py --device cuda "${CELLS[@]}"
step record "${LIMITS[5]}" "$PY" -c "$RECORD" "$OUT/gpu-tests.xml" "$RESULTS" \
    "$OUT/gpu-tests.txt" "bench/gpu_check.sh $*"

if [ "$DRY" = 1 ]; then
    say "dry run: nothing ran; at most $(( ${LIMITS[0]} + ${LIMITS[1]} + ${LIMITS[2]} + ${LIMITS[3]} + ${LIMITS[4]} + ${LIMITS[5]} )) s of timeouts"
    exit 0
fi
if [ "$FAILED" = 0 ]; then
    say "gpu_check.sh: every step passed; results in $RESULTS"
else
    say "gpu_check.sh: some steps did not pass (see $OUT/summary.txt)"
fi
exit "$FAILED"
