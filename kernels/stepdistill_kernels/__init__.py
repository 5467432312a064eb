"""Fused Triton kernels for the score losses (import name: `stepdistill_kernels`).

One folder per loss, each a four-part unit (DESIGN.md section 4):
  reference.py      the PyTorch specification; runs anywhere; tests and benchmarks import this one
  triton_kernel.py  the Triton kernel(s) and their launcher: pointer arguments commented, math in the header
  function.py       the torch.autograd.Function and its `*_fused` entry point
  bench.py          the GPU benchmark (eager reference vs torch.compile vs fused), run by eval/kernels_gpu.py

Shared: common.py (shape checks, the sample-dense layout; torch only), launch.py (the flat grid, partial-sum
reductions, device check), testing.py (saved-bytes measurement, parity helpers), benchmark.py (the GPU timing
harness). Every loss follows one pattern: the forward computes the float32 loss and keeps only references to
its inputs plus (B,)-sized vectors; the backward reads grad_output on the device and recomputes the gradients
in float32 into fresh tensors (no host sync, one rounding to the input dtype, nothing the caller can alias).

References are imported here; the fused functions load Triton on first access (`stepdistill_kernels.dmd_loss_fused`),
so the references stay usable where Triton is not installed. Recipes call `stepdistill.ops`, not this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from .dmd.reference import dmd_loss
from .pseudo_huber.reference import pseudo_huber_loss
from .sid.reference import sid_loss
from .vsd.reference import vsd_loss

KERNELS = ("dmd", "vsd", "sid", "pseudo_huber")  # folder names; each bench.py has REFERENCE, FUSED, make_args, bench

_FUSED = {
    "dmd_loss_fused": ".dmd.function",
    "vsd_loss_fused": ".vsd.function",
    "sid_loss_fused": ".sid.function",
    "pseudo_huber_loss_fused": ".pseudo_huber.function",
}

__all__ = ["KERNELS", "dmd_loss", "vsd_loss", "sid_loss", "pseudo_huber_loss", *_FUSED]


def __getattr__(name: str) -> Any:  # PEP 562: import Triton only when a fused function is asked for
    if name in _FUSED:
        return getattr(importlib.import_module(_FUSED[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
