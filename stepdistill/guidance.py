"""Classifier-free guidance, in one place (Ho & Salimans 2022): x0 = uncond + s (cond - uncond) on a `Denoiser`.

`CFGDenoiser` applies it (one batched call for both branches; a scale per sample where LCM samples w), and
`guided` binds a conditioner's conditions to it. LCM writes the same guidance as x0_c + w (x0_c - x0_u), which
is s = 1 + w (`lcm_guidance_to_cfg`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .conditioning import cat_conditions
from .denoiser import Denoiser, broadcast

__all__ = ["CFGDenoiser", "guided", "lcm_guidance_to_cfg"]


class CFGDenoiser(nn.Module):
    """Classifier-free guidance on x0: `uncond + scale * (cond - uncond)`.

    scale = 1 is the conditional model; scale = 0 the unconditional one; a tensor gives one scale per
    sample (LCM's sampled guidance). The guidance is linear, so it is the same whether applied to x0, eps or
    v. `uncond` holds the keyword arguments of the unconditional branch (null class label, empty-prompt
    embeddings); both branches run as one batch.
    """

    def __init__(self, denoiser: Denoiser, scale: float | torch.Tensor):
        super().__init__()
        self.denoiser = denoiser
        self.scale = scale

    @property
    def conditional(self) -> bool:
        """Every scale is 1: the conditional prediction alone (one network call)."""
        return bool((torch.as_tensor(self.scale) == 1.0).all())

    def forward(self, x_t, t, *, uncond: dict | None = None, **cond):
        if self.conditional or uncond is None:
            if not self.conditional:
                raise ValueError("CFGDenoiser with scale != 1 needs `uncond=` conditioning")
            return self.denoiser(x_t, t, **cond)
        x0_cond, x0_uncond = self.branches(x_t, t, uncond=uncond, **cond)
        scale = broadcast(self.scale, x0_cond) if torch.is_tensor(self.scale) else self.scale
        return x0_uncond + scale * (x0_cond - x0_uncond)

    def branches(self, x_t, t, *, uncond: dict, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional and unconditional x0 predictions, from one batched call (for losses that
        apply the guidance themselves, such as the fused VSD kernel)."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        both = cat_conditions(uncond, cond)
        x0_uncond, x0_cond = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        return x0_cond, x0_uncond


def lcm_guidance_to_cfg(w: float) -> float:
    """LCM embeds w with x = cond + w (cond - uncond) (Luo et al. 2023, Eq. 9): our scale is w + 1."""
    return w + 1.0


def guided(denoiser, scale: float | torch.Tensor, conditioner, labels: torch.Tensor):
    """`denoiser` guided at `scale` (one, or one per sample) for the conditions of `labels`, as a function of
    (x_t, t); where every scale is 1, the conditional prediction alone."""
    cfg = CFGDenoiser(denoiser, scale)
    cond = conditioner.cond(labels)
    return partial(cfg, **cond) if cfg.conditional else partial(cfg, uncond=conditioner.uncond(labels), **cond)
