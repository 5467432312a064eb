"""Pseudo-Huber consistency loss (iCT): reference (spec), Triton kernels, autograd Function, benchmark.

`reference.pseudo_huber_loss` runs anywhere; `function.pseudo_huber_loss_fused` needs CUDA or TRITON_INTERPRET=1.
"""

from .reference import pseudo_huber_loss

__all__ = ["pseudo_huber_loss"]
