"""Kernel tests: every fused loss against its reference, through Triton's CPU interpreter when there is
no GPU (compiled on CUDA otherwise). Shapes are small because the interpreter runs each program in Python.

How the interpreter is enabled: triton 3.x reads TRITON_INTERPRET when `@triton.jit` decorates a function,
and its own helpers (`tl.sum`, ...) are decorated when triton is first imported. So this file, which
pytest imports when it reaches tests/kernels (before the test_*.py files that import diffusers, which
imports triton), sets the variable for the whole process. If triton was imported earlier anyway (another
file order on the command line), the in-process CPU tests are skipped and `test_interpreter_suite.py`
runs this folder in a fresh interpreter process instead: either way the kernels are exercised.
`test_kernel_compile.py` adds what the interpreter cannot check: that every kernel compiles for sm_90.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

from stepdistill_kernels.launch import stdlib_interpreted  # noqa: E402 - imports triton, after the line above
from stepdistill_kernels.testing import loss_and_grads  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IN_PROCESS = DEVICE == "cuda" or stdlib_interpreted()
SKIP_REASON = "triton was imported before TRITON_INTERPRET=1 could be set; test_interpreter_suite.py covers this"
SHAPES = [(3, 5, 7, 9), (2, 37)]  # odd sizes: partial blocks, N not a power of two; (B, C, H, W) and (B, D)
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rtol, atol as a fraction of the reference's largest entry): fp32 differs by summation order only;
# bf16/fp16 gradients are rounded to the input dtype (the interpreter truncates bf16 where CUDA rounds).
TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2e-2, 1e-2), torch.float16: (2e-3, 1e-3)}


@pytest.fixture
def device() -> torch.device:
    """Where the fused kernels run: CUDA (compiled) or CPU (interpreted; skipped if that is impossible here)."""
    if not IN_PROCESS:
        pytest.skip(SKIP_REASON)
    return torch.device(DEVICE)


@pytest.fixture(params=SHAPES, ids=lambda s: "x".join(map(str, s)))
def shape(request: pytest.FixtureRequest) -> tuple[int, ...]:
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    rtol, atol = TOLERANCES[dtype]
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    scale = float(expected.float().abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol * max(scale, 1e-12))


@pytest.fixture
def check() -> Callable[..., None]:
    """check(fused, reference, args, dtype, scale=1.0): loss and every gradient of (scale * loss) match."""

    def _check(fused, reference, args, dtype: torch.dtype, scale: float = 1.0) -> None:
        loss_f, grads_f = loss_and_grads(fused, args, scale)
        loss_r, grads_r = loss_and_grads(reference, args, scale)
        assert loss_f.dtype == torch.float32 and loss_f.ndim == 0
        # Both accumulate in float32 from the same inputs, so the loss is tight whatever the input dtype.
        torch.testing.assert_close(loss_f, loss_r, rtol=1e-5, atol=1e-7)
        assert len(grads_f) == len(grads_r) > 0
        for gf, gr in zip(grads_f, grads_r):
            assert_matches(gf, gr, dtype)

    return _check
