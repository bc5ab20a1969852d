#!/usr/bin/env bash
# Bootstrap vitspec's development environment in .venv, idempotently.
#
# Needs only Python >= 3.11 (python3.11 if present, else python3). Installs the
# pinned torch/torchvision first, then vitspec editable with every extra, so that
# resolving vitspec's own range (torch>=2.4, no upper cap) finds the pin already
# satisfied and never pulls another torch (pip upgrades only when a requirement is
# unmet); the check at the end refuses an environment whose torch is not the pin. Reruns are fast: the installs are skipped while
# .venv/.vitspec-stamp holds the sha256 of the current pyproject.toml.
#
#   bash scripts/setup.sh && .venv/bin/python -m pytest -q -n 2 -m "not slow"
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP="$VENV/.vitspec-stamp"
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)

say() { printf 'setup: %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "vitspec needs Python >= 3.11, but $PY is $("$PY" --version 2>&1)" >&2
    exit 1
  fi
  say "creating $VENV with $("$PY" --version 2>&1)"
  # --clear: a .venv whose interpreter is gone (moved machine) is rebuilt, not half-reused.
  "$PY" -m venv --clear "$VENV"
fi

want=$("$VENV/bin/python" -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  say "$VENV is up to date (pyproject.toml unchanged); nothing to install"
  exit 0
fi

pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
say "installing ${TORCH_PINS[*]}"
"${pip[@]}" install -q "${TORCH_PINS[@]}"
say "installing vitspec (editable) with extras thirdparty, cli, dev"
"${pip[@]}" install -q -e ".[thirdparty,cli,dev]"

# Refuse to stamp an environment whose torch is not the pinned one.
"$VENV/bin/python" - <<'PY'
import sys
import torch
if torch.__version__.split("+")[0] != "2.14.1":
    sys.exit(f"setup: expected torch 2.14.1, found {torch.__version__}")
PY

echo "$want" >"$STAMP"
say "done (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
