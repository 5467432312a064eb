"""DMD loss benchmark: eager reference vs torch.compile(reference) vs fused, forward + backward."""

from __future__ import annotations

from typing import Any

import torch

from ..benchmark import bench_loss
from ..testing import randn
from .function import dmd_loss_fused
from .reference import dmd_loss

REFERENCE, FUSED = dmd_loss, dmd_loss_fused  # what eval/kernels_*.py and the memory test compare


def make_args(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, layout: str = "contiguous"):
    """(x, x0_real, x0_fake); only x requires grad, as in a generator step."""
    return (randn(shape, dtype, device, layout=layout, requires_grad=True),
            randn(shape, dtype, device, layout=layout), randn(shape, dtype, device, layout=layout))


def bench(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cuda") -> dict[str, Any]:
    return bench_loss(dmd_loss, dmd_loss_fused, make_args(shape, dtype, device))
