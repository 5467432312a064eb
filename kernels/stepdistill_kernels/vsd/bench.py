"""VSD loss benchmark: eager reference vs torch.compile(reference) vs fused, forward + backward."""

from __future__ import annotations

from typing import Any

import torch

from ..benchmark import bench_loss
from ..testing import randn
from .function import vsd_loss_fused
from .reference import vsd_loss

REFERENCE, FUSED = vsd_loss, vsd_loss_fused  # what eval/kernels_*.py and the memory test compare

S_REAL, S_FAKE = 4.5, 4.5  # SwiftBrush's README scale, used for the teacher and the LoRA alike


def make_args(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, layout: str = "contiguous"):
    """(x, real cond, real uncond, fake cond, fake uncond, s_real, s_fake, w (B,)); only x requires grad."""
    preds = [randn(shape, dtype, device, layout=layout) for _ in range(4)]
    weight = torch.rand(shape[0], device=device) + 0.5
    return (randn(shape, dtype, device, layout=layout, requires_grad=True), *preds, S_REAL, S_FAKE, weight)


def bench(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cuda") -> dict[str, Any]:
    return bench_loss(vsd_loss, vsd_loss_fused, make_args(shape, dtype, device))
