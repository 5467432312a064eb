"""Pseudo-Huber consistency loss on per-sample L2 norms (iCT): the PyTorch specification the fused kernel must reproduce.

The specification is the library's pure function in `stepdistill.losses.consistency` (the equation, its
gradients and shapes are documented there); the kernel package imports it, never the other way round.
"""

from stepdistill.losses.consistency import pseudo_huber_loss

__all__ = ["pseudo_huber_loss"]
