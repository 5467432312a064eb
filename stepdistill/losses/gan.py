"""Non-saturating GAN losses on logits (Goodfellow et al. 2014), as DMD2 uses them (Sec. 4.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake)) + softplus(-D(real)) = -log(1 - sigmoid(D(fake))) - log sigmoid(D(real))."""
    return F.softplus(logits_fake.float()).mean() + F.softplus(-logits_real.float()).mean()


def generator_gan_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """softplus(-D(fake)) = -log sigmoid(D(fake)): the non-saturating generator loss."""
    return F.softplus(-logits_fake.float()).mean()
