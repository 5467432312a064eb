#!/usr/bin/env bash
# GPU check of the fused score losses, < 5 minutes on one GPU:
#   1. the kernel tests, compiled on CUDA (tests/kernels picks CUDA when it is present);
#   2. the benchmark (4 losses x 5 shapes, bf16 by default; eager vs torch.compile vs fused, fwd + bwd,
#      CUDA-graph capture) -> eval/results/kernels_gpu.json.
# Runs on a bare machine with only torch + triton and this folder: no install, no diffusers. `kernels/`
# (which holds the `stepdistill_kernels` package) goes on the path ahead of any installed copy, the
# project's source tree beside it; tests that need diffusers skip themselves with the reason.
# Usage: bash eval/gpu_check.sh [extra kernels_gpu.py arguments, e.g. --dtypes fp32 bf16]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

export PYTHONPATH="$ROOT/kernels:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import os, stepdistill_kernels as k, torch, triton; print('stepdistill_kernels from', os.path.realpath(k.__path__[0]), '| torch', torch.__version__, '| triton', triton.__version__)"
if ! COLLECTED="$("$PY" -m pytest tests/kernels --collect-only -q -p no:cacheprovider 2>&1)"; then
    echo "$COLLECTED" | tail -n 40 >&2
    echo "gpu_check.sh: the kernel tests do not collect with this Python (above)" >&2
    exit 1
fi
echo "$COLLECTED" | tail -n 1

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible; nothing to check here (CPU: python eval/kernels_cpu.py)" >&2
    exit 2
fi
timeout 120 "$PY" -m pytest tests/kernels -q -x -rs -p no:cacheprovider
timeout 240 "$PY" eval/kernels_gpu.py --dtypes bf16 "$@"
