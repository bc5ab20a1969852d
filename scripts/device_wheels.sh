#!/usr/bin/env bash
# Download the wheels a GPU machine without network needs for scripts/device_check.sh.
#
# The device image (docs/devices.md) has Python 3.12 with torch, timm, transformers, einops,
# jaxtyping, hypothesis, pytest and pytest-xdist, but not beartype (a vitspec dependency) or
# vit-pytorch (a conformance target). Both are pure Python, so a py3 wheel made for any
# platform installs there. Versions are pinned to the ones in this checkout's .venv, so the
# GPU run tests what was tested here.
#
#   bash scripts/device_wheels.sh              # -> .device-wheels/*.whl (git-ignored)
#   bash scripts/device_wheels.sh NAME==VER    # other/extra pure-Python packages
#
# Then carry the folder: run(command="bash scripts/device_check.sh", carry=[".device-wheels"]).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEST=.device-wheels
PY=${PYTHON:-.venv/bin/python}
say() { printf 'device_wheels: %s\n' "$*"; }

if [[ ! -x "$PY" ]]; then
  say "no $PY: run scripts/setup.sh first (or set PYTHON=/path/to/python)" >&2
  exit 2
fi

pinned() {  # NAME -> NAME==VERSION from the local environment, or NAME when it is not installed
  local v
  v=$("$PY" -c 'import sys; from importlib.metadata import version; print(version(sys.argv[1]))' "$1" 2>/dev/null) \
    && echo "$1==$v" || echo "$1"
}

if (($#)); then
  wanted=("$@")
else
  wanted=("$(pinned beartype)" "$(pinned vit-pytorch)")
fi

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two of the same package stop the install there
say "downloading ${wanted[*]} into $DEST"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --abi none --platform any -d "$DEST" "${wanted[@]}"

for whl in "$DEST"/*.whl; do
  case "$whl" in
    *-none-any.whl) ;;
    *) say "$whl is not pure Python: it may not install on the device machine" >&2; exit 1 ;;
  esac
done
say "done: $(ls -1 "$DEST" | tr '\n' ' ')($(du -sh "$DEST" | cut -f1))"
