"""Score identity Distillation (SiD) generator loss: reference (spec), Triton kernels, autograd Function,
benchmark. `reference.sid_loss` runs anywhere; `function.sid_loss_fused` needs CUDA or TRITON_INTERPRET=1.
"""

from .reference import sid_loss

__all__ = ["sid_loss"]
