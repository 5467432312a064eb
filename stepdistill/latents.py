"""Where the trio's samples live: pixels, or a VAE's latents (SD-family models)."""

from __future__ import annotations

import torch


class PixelSpace:
    """Identity: the networks see images in [-1, 1]."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(-1, 1)


class LatentSpace:
    """A diffusers `AutoencoderKL`: latents = scaling_factor * (mean of q(z | image) - shift)."""

    def __init__(self, vae, resolution: int | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolution = resolution or int(vae.config.sample_size)
        self.scale = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def shape(self) -> tuple[int, int, int]:
        """One latent: (latent channels, resolution / factor, resolution / factor)."""
        size = self.resolution // self.factor
        return (int(self.vae.config.latent_channels), size, size)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> latents; a batch that already has the latents' shape (`data.precomputed`'s) is
        returned as it is (an image has 1 or 3 channels at `resolution`, never a latent's shape)."""
        if tuple(images.shape[1:]) == self.shape:
            return images.float()
        posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        return ((posterior.mean - self.shift) * self.scale).float()

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((x / self.scale + self.shift).to(self.vae.dtype)).sample.float().clamp(-1, 1)
