"""Discriminator heads on a denoiser's bottleneck features: DMD2's (on the fake score, DMD2 Sec. 4.3,
`cls_pred_branch`) and TAD-SR's time-aware one (on the frozen teacher, told the noise level).

The discriminator is the fake-score network's encoder (down blocks + mid block, `Denoiser.features`) plus
this head: DMD2 reuses the fake score's features, so the GAN costs a half network pass and its gradients
also shape the fake score's backbone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .denoiser import Denoiser


class GANHead(nn.Module):
    """Strided 4x4 convolutions (GroupNorm + SiLU) from an (C, S, S) bottleneck down to one logit per
    sample; for token features (B, N, C) from a transformer, a LayerNorm + MLP on the mean token."""

    def __init__(self, channels: int, spatial: int | None, width: int | None = None):
        super().__init__()
        width = width or channels
        if spatial is None:
            self.net = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, width), nn.SiLU(),
                                     nn.Linear(width, 1))
            self.tokens = True
            return
        self.tokens = False
        layers = _downsampling(channels, spatial, width)
        layers.append(nn.Conv2d(width if layers else channels, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.tokens:
            return self.net(features.mean(1)).flatten()
        return self.net(features).mean(dim=(1, 2, 3))

    @classmethod
    def for_denoiser(cls, denoiser: Denoiser, example_x: torch.Tensor, example_t: float, **cond) -> "GANHead":
        """Size a head by probing the bottleneck once with an example batch."""
        with torch.no_grad():
            f = denoiser.features(example_x, example_t, **cond)
        return cls(f.shape[-1], None) if f.ndim == 3 else cls(f.shape[1], f.shape[-1])


class TimeAwareGANHead(nn.Module):
    """TAD-SR's time-aware discriminator head (He et al. 2024, Sec. 3.3): real and generated images are noised to
    a level t and judged on the frozen teacher's features there, and the head is told t, so that one head
    judges every level. The conditioning is a projection (Miyato & Koyama 2018, as TAD-SR's ProjectedDiscriminator
    with c_dim): logit = w . h + <e(t), h>, h the pooled features and e(t) an MLP of t's sinusoidal embedding.
    `t` is the level as a fraction of the schedule, in [0, 1]."""

    def __init__(self, channels: int, spatial: int | None, width: int | None = None, time_dim: int = 64):
        super().__init__()
        width = width or channels
        if spatial is None:  # token features: their mean
            self.body = nn.Sequential(nn.LayerNorm(channels), nn.Linear(channels, width), nn.SiLU())
        else:
            self.body = nn.Sequential(*_downsampling(channels, spatial, width))
        self.tokens, self.time_dim = spatial is None, time_dim
        self.out = nn.Linear(width, 1)
        self.embed = nn.Sequential(nn.Linear(time_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, features: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.body(features.mean(1)) if self.tokens else self.body(features).mean(dim=(2, 3))
        half = self.time_dim // 2
        freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=h.device) / half)
        angles = 1000 * t.float().view(-1, 1).to(h.device) * freqs
        e = self.embed(torch.cat([angles.sin(), angles.cos()], dim=1))
        return self.out(h).flatten() + (e * h).sum(1)

    @classmethod
    def for_denoiser(cls, denoiser: Denoiser, example_x: torch.Tensor, example_t: float, **cond) -> "TimeAwareGANHead":
        with torch.no_grad():
            f = denoiser.features(example_x, example_t, **cond)
        return cls(f.shape[-1], None) if f.ndim == 3 else cls(f.shape[1], f.shape[-1])


def _downsampling(channels: int, spatial: int, width: int) -> list[nn.Module]:
    """Strided 4x4 convolutions (GroupNorm + SiLU) from (channels, spatial, spatial) down to (width, 1, 1)."""
    layers: list[nn.Module] = []
    c = channels
    for _ in range(int(math.log2(spatial))):
        layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.GroupNorm(min(32, width // 4) or 1, width), nn.SiLU()]
        c = width
    return layers
