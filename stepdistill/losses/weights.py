"""Per-sample weights as the losses take them: a float or a (B,) tensor."""

from __future__ import annotations

import torch


def per_sample(value: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) tensor as a contiguous float32 (B,) vector on `like`'s device."""
    v = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"expected a float or a ({batch},) per-sample tensor, got shape {tuple(v.shape)}")
    return v.contiguous()
