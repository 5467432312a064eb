"""Fallback for sessions where triton was imported before tests/kernels/conftest.py could enable its
interpreter (e.g. `pytest tests/test_trio.py tests/kernels`): run this folder in a fresh process, where it can."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stepdistill_kernels.launch import stdlib_interpreted

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(torch.cuda.is_available() or stdlib_interpreted(), reason="the kernel tests run in this process")
def test_kernel_suite_in_a_fresh_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", str(HERE), "-q", "-rs", "-p", "no:cacheprovider"],
                          cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "triton was imported before" not in proc.stdout  # the kernels really ran there
