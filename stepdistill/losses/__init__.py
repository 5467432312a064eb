"""Losses as pure functions of predictions (never of models); each cites its equation."""

from .denoising import denoising_loss
from .dmd import dmd_grad, dmd_loss
from .gan import discriminator_loss, generator_gan_loss

__all__ = ["denoising_loss", "dmd_grad", "dmd_loss", "discriminator_loss", "generator_gan_loss"]
