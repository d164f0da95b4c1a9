#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the project and its test tools.
# Installs the CPU build torch==2.13.0 first when no torch is present, so that the torch range in
# pyproject.toml does not pull a multi-GB CUDA build; an existing torch (a user's CUDA build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-}
if [ -z "$python" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1; then python=$candidate; break; fi
  done
fi
[ -n "$python" ] || { echo "setup: no python3.11 or python3 on PATH" >&2; exit 1; }

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip "$@"; }
pip install --quiet --disable-pip-version-check --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  pip install --quiet --disable-pip-version-check torch==2.13.0
fi
pip install --quiet --disable-pip-version-check -e ".[dev]"
echo "setup: ready ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
