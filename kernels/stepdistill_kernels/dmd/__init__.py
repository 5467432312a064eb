"""DMD / DMD2 distribution-matching loss: reference (spec), Triton kernel, autograd Function, benchmark.

`reference.dmd_loss` runs anywhere; `function.dmd_loss_fused` needs CUDA or TRITON_INTERPRET=1.
"""

from .reference import dmd_loss

__all__ = ["dmd_loss"]
