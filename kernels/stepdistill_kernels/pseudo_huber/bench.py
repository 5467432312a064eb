"""Pseudo-Huber loss benchmark: eager reference vs torch.compile(reference) vs fused, forward + backward."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..benchmark import bench_loss
from ..testing import randn
from .function import pseudo_huber_loss_fused
from .reference import pseudo_huber_loss

REFERENCE, FUSED = pseudo_huber_loss, pseudo_huber_loss_fused  # what eval/kernels_*.py and the memory test compare


def make_args(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, layout: str = "contiguous"):
    """(pred, target, c, w (B,)) with iCT's c = 0.00054 sqrt(d); pred requires grad, the target does not
    (iCT's target is the same network without gradient)."""
    c = 0.00054 * math.sqrt(math.prod(shape[1:]))
    weight = torch.rand(shape[0], device=device) + 0.5
    return (randn(shape, dtype, device, layout=layout, requires_grad=True),
            randn(shape, dtype, device, layout=layout), c, weight)


def bench(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cuda") -> dict[str, Any]:
    return bench_loss(pseudo_huber_loss, pseudo_huber_loss_fused, make_args(shape, dtype, device))
