"""VSD / SDS with fused guidance (SwiftBrush): reference (spec), Triton kernel, autograd Function, benchmark.

`reference.vsd_loss` runs anywhere; `function.vsd_loss_fused` needs CUDA or TRITON_INTERPRET=1.
"""

from .reference import vsd_loss

__all__ = ["vsd_loss"]
