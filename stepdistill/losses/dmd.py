"""Distribution matching distillation (Yin et al. 2024a, DMD; 2024b, DMD2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dmd_grad(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """The per-sample normalised KL gradient direction (DMD Eq. 7-8, DMD2 Sec. 4.1).

    grad = (x0_fake - x0_real) / mean_{C,H,W} |x - x0_real|, computed in float32 and with NaN/inf
    zeroed (a sample whose real-score error is 0 carries no signal). Shapes: all (B, ...).
    """
    x, x0_real, x0_fake = x.float(), x0_real.float(), x0_fake.float()
    dims = tuple(range(1, x.ndim))
    norm = (x - x0_real).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((x0_fake - x0_real) / norm, nan=0.0, posinf=0.0, neginf=0.0)


def dmd_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """Surrogate loss 0.5 * mean((x - sg(x - grad))^2), whose gradient with respect to x is
    grad / x.numel(): descending it moves each generated sample from where the fake score points
    toward where the real score points.

    x: generated samples (B, ...) with grad; x0_real, x0_fake: the two denoisers' x0 predictions at a
    noised copy of x (no grad needed). Returns a scalar.
    """
    grad = dmd_grad(x.detach(), x0_real.detach(), x0_fake.detach())
    return 0.5 * F.mse_loss(x.float(), (x.detach().float() - grad), reduction="mean")


def regression_loss(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DMD's regression loss (Yin et al. 2024a, Eq. 9): the generator's image for a stored noise
    against the teacher's ODE solution from the same noise. DMD uses LPIPS on 64-512 px images;
    this is the mean squared error, for images too small for a perceptual network (and for latents).
    It anchors the generator to the teacher's noise-to-image map, which the distribution-matching
    gradient alone leaves free. Shapes: (B, ...), target without grad; returns a float32 scalar."""
    return F.mse_loss(x.float(), target.detach().float())
