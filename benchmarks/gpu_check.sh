#!/usr/bin/env bash
# One command on a GPU machine (under 8 minutes on one GPU): the paper-size NeXtVLAD's bf16 train step
# (samples/s, MFU), the uint8 loader against it, a one-trial smoke sweep on the GPU; one summary table.
#
#   bash benchmarks/gpu_check.sh [--peak-tflops X] [--no-sweep] [...]   # options: bench_gpu.py --help
#   GPU_CHECK_CPU_SMOKE=1 bash benchmarks/gpu_check.sh                   # tiny sizes on a CPU
#
# Sets up .venv with scripts/setup.sh (which keeps an installed CUDA torch) unless the venv already
# imports the project, torch and ray: a machine without network can then run it on a venv made before.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! .venv/bin/python -c "import yt8m_search, torch, ray" >/dev/null 2>&1; then
  bash scripts/setup.sh
fi
# the loader's Ray workers inherit this; one thread each, as the trials run them
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python benchmarks/bench_gpu.py "$@"
