#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the project and its test tools.
# Installs the CPU build torch==2.13.0 first when no torch is present, so that the torch range in
# pyproject.toml does not pull a multi-GB CUDA build; an existing torch (a user's CUDA build) is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    *) echo "setup: unknown option $arg (usage: scripts/setup.sh [--tests])" >&2; exit 2 ;;
  esac
done

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

# With --tests: the browser tests (tests/test_report_browser.py) drive Debian's Chromium through its own
# chromedriver, installed here when missing, as the tests must run on a fresh machine (CI) rather than be
# skipped. Without it (the main job), no system package is touched.
if [ "$tests" != 1 ] || { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  :
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null; }; then
  as_root=""
  [ "$(id -u)" -eq 0 ] || as_root="sudo -n"
  echo "setup: installing chromium and chromium-driver (apt-get) for the browser tests"
  $as_root apt-get update -qq
  $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "setup: /usr/bin/chromium or /usr/bin/chromedriver is missing and cannot be installed here (needs apt-get" \
       "and root or sudo): tests/test_report_browser.py will fail until someone runs" \
       "'apt-get install -y chromium chromium-driver'" >&2
fi
echo "setup: ready ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))" \
  "($( (/usr/bin/chromium --version || echo "no chromium") 2>/dev/null | head -n 1))"
