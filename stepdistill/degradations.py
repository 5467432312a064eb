"""Degradations that make a super-resolution model's low-resolution input from a high-resolution image.

The default is the classical SR benchmark setting: an antialiased bicubic downsample by `scale` (MATLAB's
`imresize`, which BasicSR and the SR papers' test sets use). Options add the usual synthetic degradations in
the order of the classical model y = JPEG((x * k)_down + n) (Real-ESRGAN's first-order pipeline, fixed
parameters rather than random ranges): Gaussian blur k of `blur_sigma` HR pixels before the downsample,
additive Gaussian noise n of `noise_sigma` 8-bit levels, JPEG re-encoding at `jpeg_quality`.

Every random draw comes from a generator seeded by the image's own seed (its dataset index), so an image is
degraded the same way in every run, process and batch composition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Degradation", "bicubic_up"]


@dataclass(frozen=True)
class Degradation:
    scale: int = 4
    blur_sigma: float = 0.0  # Gaussian blur before the downsample, in HR pixels (0: none)
    noise_sigma: float = 0.0  # additive Gaussian noise on the LR image, in 8-bit levels (0: none)
    jpeg_quality: Optional[int] = None  # JPEG re-encoding of the LR image (None: none)

    def __post_init__(self) -> None:
        if self.scale < 1:
            raise ValueError(f"the degradation's scale must be >= 1, got {self.scale}")
        if self.blur_sigma < 0 or self.noise_sigma < 0:
            raise ValueError(f"blur_sigma and noise_sigma must be >= 0, got {self.blur_sigma}, {self.noise_sigma}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")

    @property
    def random(self) -> bool:
        return self.noise_sigma > 0

    def __call__(self, hr: torch.Tensor, seeds: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, C, H / scale, W / scale) in [-1, 1]; `seeds`: one per image (its
        index), needed when the degradation draws noise."""
        b, _, h, w = hr.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"image size {h}x{w} is not divisible by the scale {self.scale}")
        x = hr.float()
        if self.blur_sigma > 0:
            x = _gaussian_blur(x, self.blur_sigma)
        if self.scale > 1:
            x = F.interpolate(x, size=(h // self.scale, w // self.scale), mode="bicubic", antialias=True,
                              align_corners=False)
        x = x.clamp(-1, 1)  # bicubic overshoots near edges
        if self.noise_sigma > 0:
            if seeds is None or len(seeds) != b:
                raise ValueError(f"a noisy degradation needs one seed per image ({b}), got {seeds!r}")
            noise = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                                 for s in seeds]).to(x.device)
            x = (x + noise * (2 * self.noise_sigma / 255)).clamp(-1, 1)
        if self.jpeg_quality is not None:
            x = _jpeg(x, self.jpeg_quality)
        return x.to(hr.dtype)


def bicubic_up(lr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The LR image brought to the HR grid (what a concatenated-condition network reads), in [-1, 1]."""
    return F.interpolate(lr.float(), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-t.square() / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Round trip through 8-bit JPEG (torchvision's libjpeg; deterministic)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    if x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs 1 or 3 channels, got {x.shape[1]}")
    u8 = ((x.detach().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    out = [decode_jpeg(encode_jpeg(img, quality=quality)) for img in u8]
    return torch.stack(out).float().div(127.5).sub(1).to(x.device)
