"""DMD / DMD2 distribution-matching loss: the PyTorch specification the fused kernel must reproduce.

The specification is the library's pure function `stepdistill.losses.dmd.dmd_loss` itself (one
definition of the math, imported here):

    norm_b = mean_n |x_bn - x0_real_bn|                        (per-sample normaliser, no gradient)
    grad   = nan_to_num((x0_fake - x0_real) / norm_b)          (nan, +-inf -> 0)
    loss   = 0.5 * mean((x - sg(x - grad))^2)   (= 0.5 * mean(grad^2) up to rounding)
    d loss / d x = grad / x.numel();  no gradient to x0_real, x0_fake

Shapes: x, x0_real, x0_fake (B, ...), any float dtype; computed in float32. Returns a float32 scalar.
"""

from stepdistill.losses.dmd import dmd_loss

__all__ = ["dmd_loss"]
