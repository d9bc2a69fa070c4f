#!/bin/sh
# Creates bench/.sovereign-venv with sovereign from PyPI (its own venv: its pins must not touch .venv).
# Usage: sh bench/sovereign_venv.sh [VERSION]   (default 0.32.12, the newest on PyPI on 2026-11-28)
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
VENV="$HERE/.sovereign-venv"
VERSION="${1:-0.32.12}"
PY="${PYTHON:-python3}"
# (sovereign reads its config when imported, so check the installed distribution, not the import)
CHECK="import importlib.metadata as m; print('sovereign', m.version('sovereign'))"
if [ -x "$VENV/bin/sovereign" ] && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; then
  echo "sovereign already installed in $VENV"; exit 0
fi
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -m pip install -q "sovereign==$VERSION" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/python" -c "$CHECK"
