"""The GAN classifier head on the fake score's bottleneck (DMD2 Sec. 4.3, `cls_pred_branch`).

The discriminator is the fake-score network's encoder (down blocks + mid block) plus a small head:
DMD2 reuses the fake score's features, so the GAN costs a half network pass and its gradients also
shape the fake score's backbone. `bottleneck_features` runs a diffusers UNet only up to its mid
block: a forward hook records the mid block's output and stops the pass there.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .denoiser import Denoiser, _b


class _Stop(Exception):
    pass


def _bottleneck_module(net: nn.Module) -> nn.Module:
    if getattr(net, "mid_block", None) is not None:
        return net.mid_block
    blocks = getattr(net, "transformer_blocks", None)
    if blocks is not None and len(blocks) > 0:  # DiT / PixArt / SD3: the middle transformer block
        return blocks[len(blocks) // 2]
    raise TypeError(f"{type(net).__name__} has neither a mid_block nor transformer_blocks to take features from")


def bottleneck_features(denoiser: Denoiser, x_t: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
    """The denoiser network's bottleneck activations at (x_t, t), without running its decoder.

    Gradients flow to x_t and to the network's parameters (those with requires_grad)."""
    net = denoiser.net
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = _bottleneck_module(net).register_forward_hook(hook)
    try:
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        net_in = (x_t.float() * _b(denoiser.schedule.c_in(t), x_t)).to(denoiser.dtype)
        denoiser._select_adapter()
        net(net_in, timestep=denoiser.schedule.timestep(t), **cond)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError("the bottleneck hook did not fire")
    return captured[0].float()


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
            f = bottleneck_features(denoiser, example_x, example_t, **cond)
        return cls(f.shape[-1], None) if f.ndim == 3 else cls(f.shape[1], f.shape[-1])
