#!/usr/bin/env bash
# The GPU run of vitspec, in one command of at most 8 minutes (docs/devices.md):
#
#   1. the test suite with VITSPEC_TEST_DEVICE=cuda (not the slow tests),
#   2. the conformance matrix on cuda, float32 and bfloat16 against the float64 spec,
#   3. benchmarks/bench_spec.py --device cuda, ViT-B/16, batch 64, float32 and bfloat16,
#
# each under its own time limit, results under $OUT (at most 8 files, as the device tool
# brings back):
#
#   device_check.log        everything printed, with each step's exit status
#   devices_section.md      a section ready to paste into docs/devices.md
#   tests.xml               JUnit report of the test suite
#   matrix.json matrix.md   the matrix rows (conformance.matrix's own formats)
#   spec_cuda.json          bench_spec.py results for benchmarks/results/ (summarize.py reads them)
#   spec_cuda_bfloat16.json
#   device_check.tar.gz     all of the above plus every per-model conformance report
#
#   bash scripts/device_check.sh            # on the GPU machine (see docs/devices.md for the run call)
#   bash scripts/device_check.sh --smoke    # here: the same pipeline on the CPU with tiny sizes
#
# Without CUDA (and without --smoke) it stops at once with one line on stderr and exit 3.
# Missing pure-Python packages (beartype, vit-pytorch) are installed from .device-wheels/
# (scripts/device_wheels.sh) into a private folder; nothing needs the network.
#
# Environment: OUT (default out/device_check), PYTHON (default .venv/bin/python, else python3),
# DEVICE_CHECK_ALLOW_CPU=1 (same as --smoke), DEVICE_CHECK_TESTS (pytest arguments replacing
# the default selection), T_TESTS / T_MATRIX / T_BENCH (per-step limits in seconds).
# Exit status: 0 every step passed, 1 some step failed (see the log), 2 bad usage or a
# missing package, 3 no CUDA device.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SMOKE=${DEVICE_CHECK_ALLOW_CPU:-0}
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "device_check: unknown argument $arg (use --smoke or --help)" >&2; exit 2 ;;
  esac
done
[[ "$SMOKE" == 1 ]] || SMOKE=0

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi

# -- 0. fail fast: CUDA (one line, no traceback) ------------------------------------------------
if [[ $SMOKE == 0 ]]; then
  why=$("$PY" -c 'import torch; print("" if torch.cuda.is_available() else "torch.cuda.is_available() is False")' \
    2>/dev/null) || why="torch is not importable by $PY"
  if [[ -n "$why" ]]; then
    echo "device_check: no CUDA device ($why): run it on the GPU machine (docs/devices.md), or --smoke for the CPU test" >&2
    exit 3
  fi
fi
DEV=$([[ $SMOKE == 1 ]] && echo cpu || echo cuda)
# Step limits: the GPU run must end within 8 minutes; a smoke run on a shared 2-core CPU needs longer.
if [[ $SMOKE == 1 ]]; then limits=(300 200 240); else limits=(200 120 70); fi
T_TESTS=${T_TESTS:-${limits[0]}} T_MATRIX=${T_MATRIX:-${limits[1]}} T_BENCH=${T_BENCH:-${limits[2]}}

OUT=${OUT:-$ROOT/out/device_check}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vitspec-device-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$WORK/matrix" "$WORK/bench" || { echo "device_check: cannot create $OUT" >&2; exit 2; }
LOG=$WORK/device_check.log
STATUS=$WORK/steps.tsv  # step <TAB> exit status <TAB> seconds
: >"$STATUS"
log() { printf '[device_check %s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$LOG"; }

# -- 1. packages: wheels for what the image lacks ----------------------------------------------
SITE=$WORK/site
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
missing=$("$PY" - <<'PY'
import importlib


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


print(" ".join(m for m in ("beartype", "vit_pytorch") if not importable(m)))
PY
)
if [[ -n "$missing" ]]; then
  if ! compgen -G ".device-wheels/*.whl" >/dev/null; then
    echo "device_check: missing $missing and no .device-wheels/: run scripts/device_wheels.sh here and carry .device-wheels" >&2
    exit 2
  fi
  log "installing wheels for: $missing"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .device-wheels/*.whl \
    >>"$LOG" 2>&1; then
    echo "device_check: installing .device-wheels/*.whl failed (see $LOG)" >&2
    exit 2
  fi
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH#"$ROOT"}"
fi

# The project's pytest plugins (pyproject.toml, [project.entry-points.pytest11]) load by entry point
# from an installed vitspec; a bare checkout (the GPU machine) names them with -p instead (naming
# one that is also installed would register it twice, which pytest refuses).
read -r -a PLUGIN <<<"$("$PY" - <<'PY'
import tomllib
from importlib.metadata import entry_points

declared = tomllib.load(open("pyproject.toml", "rb"))["project"].get("entry-points", {}).get("pytest11", {})
installed = {ep.value for ep in entry_points(group="pytest11")}
print(" ".join(f"-p {module}" for module in declared.values() if module not in installed))
PY
)"

{
  echo "mode: $([[ $SMOKE == 1 ]] && echo 'smoke (CPU, tiny sizes: not figures to record)' || echo 'cuda')"
  "$PY" - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0))
PY
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  if commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null); then
    [[ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]] && commit+=" with uncommitted changes"
    echo "commit $commit"
  fi
} >"$WORK/environment.txt" 2>&1
cat "$WORK/environment.txt" >>"$LOG"

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, log output and status
  local name=$1 limit=$2 t0 rc
  shift 2
  log "step $name (limit ${limit}s): $*"
  t0=$(date +%s)
  # SIGINT first: pytest still writes its JUnit report for the tests that ran; KILL 15 s later.
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  [[ $rc == 124 || $rc == 137 ]] && log "step $name: ran past ${limit}s and was stopped"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$STATUS"
  log "step $name: exit $rc after $(($(date +%s) - t0))s"
}

# -- 2. the test suite -------------------------------------------------------------------------
if [[ -n "${DEVICE_CHECK_TESTS:-}" ]]; then
  read -r -a TESTS <<<"$DEVICE_CHECK_TESTS"
elif [[ $SMOKE == 1 ]]; then
  TESTS=(tests/test_dims.py -k device)
else
  workers=$(($(nproc) / 2 > 8 ? 8 : $(nproc) / 2))
  TESTS=(-m "not slow")
  "$PY" -c 'import xdist' 2>/dev/null && ((workers > 1)) && TESTS+=(-n "$workers")
fi
VITSPEC_TEST_DEVICE=$DEV step tests "$T_TESTS" \
  "$PY" -m pytest -q -p no:cacheprovider "${PLUGIN[@]}" --junitxml="$WORK/tests.xml" "${TESTS[@]}"

# -- 3. the conformance matrix -----------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
  MATRIX=(--library vit_pytorch --only "vit_pytorch:cls" --batch 1)
else
  MATRIX=(--library all)
fi
step matrix "$T_MATRIX" "$PY" -m conformance.matrix --device "$DEV" --dtypes float32,bfloat16 \
  --out "$WORK/matrix" "${MATRIX[@]}"

# -- 4. bench_spec.py --------------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
  BENCH=(--model vit_s16 --quick --reps 1 --only explicit,memory,timm)
else
  BENCH=(--model vit_b16 --batch 64)
fi
for dtype in float32 bfloat16; do
  step "bench_$dtype" "$T_BENCH" "$PY" benchmarks/bench_spec.py --device "$DEV" --dtype "$dtype" \
    --out "$WORK/bench" "${BENCH[@]}"
done

# -- 5. results under $OUT ---------------------------------------------------------------------
"$PY" scripts/device_section.py "$WORK" $([[ $SMOKE == 1 ]] && echo --smoke) >>"$LOG" 2>&1 ||
  log "scripts/device_section.py failed: devices_section.md is missing"

failed=$(awk -F'\t' '$2 != 0 {print $1}' "$STATUS" | tr '\n' ' ')
log "done; failed steps: ${failed:-none}"
cp "$LOG" "$WORK/devices_section.md" "$OUT/" 2>/dev/null
cp "$WORK/tests.xml" "$WORK/matrix/matrix.json" "$WORK/matrix/matrix.md" "$WORK"/bench/spec_*.json "$OUT/" 2>/dev/null
tar -czf "$OUT/device_check.tar.gz" -C "$WORK" --exclude=site . 2>/dev/null
echo "device_check: results in $OUT ($(ls "$OUT" | tr '\n' ' ')); failed steps: ${failed:-none}"
[[ -z "$failed" ]]
