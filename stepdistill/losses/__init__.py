"""Losses as pure functions of predictions (never of models); each cites its equation.

DMD and SIM are defined here; the VSD, SiD and pseudo-Huber specifications live beside their fused kernels
(`stepdistill_kernels.<loss>.reference`) and are re-exported, so each equation is written once.
Recipes call `stepdistill.ops`, which picks the fused kernel or these references.
"""

from stepdistill_kernels.pseudo_huber.reference import pseudo_huber_loss
from stepdistill_kernels.sid.reference import sid_loss
from stepdistill_kernels.vsd.reference import vsd_loss

from .denoising import denoising_loss
from .dmd import dmd_grad, dmd_loss, regression_loss
from .gan import discriminator_loss, generator_gan_loss
from .sim import sim_loss

__all__ = ["denoising_loss", "dmd_grad", "dmd_loss", "discriminator_loss", "generator_gan_loss",
           "pseudo_huber_loss", "regression_loss", "sid_loss", "sim_loss", "vsd_loss"]
