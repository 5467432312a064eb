"""SiD loss benchmark: eager reference vs torch.compile(reference) vs fused, forward + backward."""

from __future__ import annotations

from typing import Any

import torch

from ..benchmark import bench_loss
from ..testing import randn
from .function import sid_loss_fused
from .reference import sid_loss

REFERENCE, FUSED = sid_loss, sid_loss_fused  # what eval/kernels_*.py and the memory test compare

ALPHA = 1.2  # SiD's default


def make_args(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, layout: str = "contiguous"):
    """(x, y_real, y_fake, alpha); all three tensors require grad (SiD backpropagates through both networks)."""
    return (*(randn(shape, dtype, device, layout=layout, requires_grad=True) for _ in range(3)), ALPHA)


def bench(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cuda") -> dict[str, Any]:
    return bench_loss(sid_loss, sid_loss_fused, make_args(shape, dtype, device))
