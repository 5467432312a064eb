#!/usr/bin/env bash
# GPU check of the fused score losses, < 5 minutes on one GPU:
#   1. the kernel tests, compiled on CUDA (tests/kernels picks CUDA when it is present);
#   2. the benchmark grid (4 losses x 3 shapes x fp32/bf16, eager vs torch.compile vs fused, fwd + bwd)
#      -> eval/results/kernels_gpu.json.
# Usage: bash eval/gpu_check.sh [extra kernels_gpu.py arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device visible; nothing to check here (CPU: python eval/kernels_cpu.py)" >&2
    exit 2
fi
timeout 120 "$PY" -m pytest tests/kernels -q -x -p no:cacheprovider
timeout 240 "$PY" eval/kernels_gpu.py "$@"
