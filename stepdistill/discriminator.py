"""DMD2's discriminator: a small head on the fake score's bottleneck (DMD2 Sec. 4.3, `cls_pred_branch`).

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
        layers: list[nn.Module] = []
        c = channels
        for _ in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.GroupNorm(min(32, width // 4) or 1, width), nn.SiLU()]
            c = width
        layers.append(nn.Conv2d(c, 1, 1))
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
