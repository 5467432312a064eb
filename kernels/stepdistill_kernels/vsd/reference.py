"""VSD / SDS with both guidances fused (SwiftBrush): the PyTorch specification the fused kernel must reproduce.

The specification is the library's pure function in `stepdistill.losses.vsd` (the equation, its
gradients and shapes are documented there); the kernel package imports it, never the other way round.
"""

from stepdistill.losses.vsd import vsd_loss

__all__ = ["vsd_loss"]
