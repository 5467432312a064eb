"""Score identity Distillation generator loss: the PyTorch specification the fused kernel must reproduce.

The specification is the library's pure function in `stepdistill.losses.sid` (the equation, its
gradients and shapes are documented there); the kernel package imports it, never the other way round.
"""

from stepdistill.losses.sid import OMEGA_MIN, sid_loss, sid_normaliser

__all__ = ["OMEGA_MIN", "sid_loss", "sid_normaliser"]
