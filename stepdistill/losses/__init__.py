"""Every loss of the toolkit, as pure functions of predictions (never of models); each cites its equation.

One namespace for recipes: `from stepdistill import losses; losses.dmd_loss(...)`. The four losses with
a fused Triton kernel (DMD, VSD, SiD, pseudo-Huber) are exported through `stepdistill.ops.dispatched`:
the kernel on CUDA, the PyTorch reference elsewhere, same signature and value. The references themselves
are `stepdistill.losses.<family>.<name>` (and `losses.<name>.reference`); the kernel package
`stepdistill_kernels` imports them as its specification.

  family         module           losses
  denoising      denoising.py     denoising_loss (fake scores, teachers)
  DMD / DMD2     dmd.py           dmd_grad, dmd_loss*, regression_loss
  GAN            gan.py           discriminator_loss, generator_gan_loss
  SiD            sid.py           sid_loss*, sid_normaliser
  SFD            sfd.py           sfd_loss (SiD's, each row weighted by its term's coefficient)
  BOOT           boot.py          boot_loss, signal_step
  SIM            sim.py           sim_loss, sim_fixed_direction_loss
  VSD            vsd.py           vsd_loss*
  consistency    consistency.py   pseudo_huber_loss*, consistency_l2_loss, lcm_huber_loss, ict_weight,
                                  ect_weight
  SR (TAD-SR)    sr.py            hsd_loss, hinge_discriminator_loss, hinge_generator_loss
                                  (* fused on CUDA)
"""

from stepdistill.ops import dispatched

from . import consistency, dmd, sid, vsd
from .boot import boot_loss, signal_step
from .consistency import consistency_l2_loss, ect_weight, ict_weight, lcm_huber_loss
from .denoising import denoising_loss
from .dmd import dmd_grad, regression_loss
from .gan import discriminator_loss, generator_gan_loss
from .sfd import sfd_loss
from .sid import sid_normaliser
from .sim import sim_fixed_direction_loss, sim_loss
from .sr import hinge_discriminator_loss, hinge_generator_loss, hsd_loss
from .weights import per_sample

dmd_loss = dispatched(dmd.dmd_loss, "dmd_loss_fused")
vsd_loss = dispatched(vsd.vsd_loss, "vsd_loss_fused")
sid_loss = dispatched(sid.sid_loss, "sid_loss_fused")
pseudo_huber_loss = dispatched(consistency.pseudo_huber_loss, "pseudo_huber_loss_fused")

__all__ = ["boot_loss", "consistency_l2_loss", "denoising_loss", "discriminator_loss", "dmd_grad", "dmd_loss", "ect_weight",
           "generator_gan_loss", "hinge_discriminator_loss", "hinge_generator_loss", "hsd_loss", "ict_weight",
           "lcm_huber_loss", "per_sample", "pseudo_huber_loss", "regression_loss", "sfd_loss", "sid_loss", "sid_normaliser",
           "signal_step", "sim_fixed_direction_loss", "sim_loss", "vsd_loss"]
