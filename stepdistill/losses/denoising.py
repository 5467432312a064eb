"""The denoising (score-matching) loss every fake score and teacher trains with."""

from __future__ import annotations

import torch


def denoising_loss(x0_hat: torch.Tensor, x0: torch.Tensor, weight: torch.Tensor | float = 1.0) -> torch.Tensor:
    """mean_b w_b * mean_{C,H,W} (x0_hat - x0)^2 (Ho et al. 2020 / EDM Eq. 2 written in x0 space).

    `weight` (B,) chooses the parameterisation the loss is equivalent to: `native_loss_weight` in
    `stepdistill.denoiser` gives epsilon-, v- or EDM-weighted MSE from the same x0 error.
    """
    err = (x0_hat.float() - x0.float()) ** 2
    per_sample = err.flatten(1).mean(1)
    return (torch.as_tensor(weight, device=per_sample.device, dtype=per_sample.dtype) * per_sample).mean()
