"""Kernel dispatch: the score losses, fused (Triton) on CUDA and the PyTorch reference elsewhere.

Recipes call these, never a kernel directly. Each function has its reference's signature and result
(see `stepdistill_kernels.<loss>.reference` for the equations). The choice, made per call:

  1. `use_triton(True | False)` if set (also a context manager: `with use_triton(True): ...`);
  2. else the environment variable STEPDISTILL_OPS = `triton` | `reference` (default `auto`);
  3. auto: Triton when the first tensor is on CUDA and Triton imports, the reference otherwise.

Forcing Triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter; how the tests cover the
kernels without a GPU); without it the call fails with a message saying so.
"""

from __future__ import annotations

import importlib
import os
from functools import lru_cache
from typing import Callable

import torch

import stepdistill_kernels
from stepdistill_kernels import dmd_loss as _dmd_reference
from stepdistill_kernels import pseudo_huber_loss as _pseudo_huber_reference
from stepdistill_kernels import sid_loss as _sid_reference
from stepdistill_kernels import vsd_loss as _vsd_reference

_BACKENDS = ("auto", "triton", "reference")
_override: bool | None = None


class use_triton:  # noqa: N801 - reads as a function call, works as a context manager too
    """Force the Triton kernels (True), the references (False), or go back to the default (None).

    `use_triton(True)` sets it for the process; `with use_triton(True): ...` restores the previous choice on exit.
    """

    def __init__(self, flag: bool | None) -> None:
        global _override
        self._previous, _override = _override, flag

    def __enter__(self) -> "use_triton":
        return self

    def __exit__(self, *exc: object) -> None:
        global _override
        _override = self._previous


@lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True


def triton_enabled(x: torch.Tensor) -> bool:
    """Whether a loss called on `x` runs the fused Triton kernel (see the module docstring for the rules)."""
    if _override is not None:
        return _override
    backend = os.environ.get("STEPDISTILL_OPS", "auto").lower()
    if backend not in _BACKENDS:
        raise ValueError(f"STEPDISTILL_OPS={backend!r}: expected one of {', '.join(_BACKENDS)}")
    if backend != "auto":
        return backend == "triton"
    return x.is_cuda and _triton_importable()


def _fused(name: str) -> Callable[..., torch.Tensor]:
    return getattr(stepdistill_kernels, name)  # imports Triton on first use (stepdistill_kernels.__getattr__)


def dmd_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """DMD/DMD2 loss 0.5 mean((x - sg(x - grad))^2), grad = (x0_fake - x0_real) / mean|x - x0_real| per sample.

    Equal to `stepdistill.losses.dmd_loss`; d/dx = grad / numel; no gradient to x0_real, x0_fake."""
    if triton_enabled(x):
        return _fused("dmd_loss_fused")(x, x0_real, x0_fake)
    return _dmd_reference(x, x0_real, x0_fake)


def vsd_loss(
    x: torch.Tensor,
    x0_real_cond: torch.Tensor,
    x0_real_uncond: torch.Tensor,
    x0_fake_cond: torch.Tensor,
    x0_fake_uncond: torch.Tensor,
    s_real: float,
    s_fake: float,
    weight: torch.Tensor | float,
) -> torch.Tensor:
    """VSD/SDS loss with both CFGs fused: grad = w_b (x0_fake^cfg - x0_real^cfg), loss 0.5 mean((x - sg(x - grad))^2)."""
    if triton_enabled(x):
        return _fused("vsd_loss_fused")(x, x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond,
                                        s_real, s_fake, weight)
    return _vsd_reference(x, x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond, s_real, s_fake, weight)


def sid_loss(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD loss mean((y_real - y_fake)((y_real - x) - alpha (y_real - y_fake)) / omega_b), omega_b = mean|x - y_real|
    (detached, >= 1e-5); gradients to x, y_real and y_fake."""
    if triton_enabled(x):
        return _fused("sid_loss_fused")(x, y_real, y_fake, alpha)
    return _sid_reference(x, y_real, y_fake, alpha)


def pseudo_huber_loss(
    pred: torch.Tensor, target: torch.Tensor, c: float, weight: torch.Tensor | float | None = None
) -> torch.Tensor:
    """iCT pseudo-Huber loss mean_b w_b (sqrt(||pred_b - target_b||^2 + c^2) - c); gradients to pred, target, weight."""
    if triton_enabled(pred):
        return _fused("pseudo_huber_loss_fused")(pred, target, c, weight)
    return _pseudo_huber_reference(pred, target, c, weight)


__all__ = ["dmd_loss", "vsd_loss", "sid_loss", "pseudo_huber_loss", "use_triton", "triton_enabled"]
