"""Per-sample weights as the losses take them: a float or a (B,) tensor."""

from __future__ import annotations

import torch


def per_sample(value: torch.Tensor | float, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A float or a (B,) tensor as a contiguous float32 (B,) vector on `like`'s device."""
    if not torch.is_tensor(value):  # a fill on the device: no host-to-device copy (CUDA-graph capture allows it)
        return torch.full((batch,), float(value), dtype=torch.float32, device=like.device)
    v = value.to(device=like.device, dtype=torch.float32)
    if v.ndim == 0:
        v = v.expand(batch)
    if v.shape != (batch,):
        raise ValueError(f"expected a float or a ({batch},) per-sample tensor, got shape {tuple(v.shape)}")
    return v.contiguous()


def weighted_mean(per: torch.Tensor, weight: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor:
    """mean_b w_b per_b of per-sample values `per` (B,), with weights as `per_sample` takes them (None: 1)."""
    return per.mean() if weight is None else (per_sample(weight, like.shape[0], like) * per).mean()
