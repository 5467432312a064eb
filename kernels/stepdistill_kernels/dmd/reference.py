"""DMD / DMD2 distribution-matching loss: the PyTorch specification the fused kernel must reproduce.

The specification is the library's pure function in `stepdistill.losses.dmd` (the equation, its
gradients and shapes are documented there); the kernel package imports it, never the other way round.
"""

from stepdistill.losses.dmd import dmd_loss

__all__ = ["dmd_loss"]
