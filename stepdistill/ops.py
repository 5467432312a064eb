"""Kernel dispatch: a loss runs its fused Triton kernel on CUDA and its PyTorch reference elsewhere.

`stepdistill.losses` wraps each loss that has a kernel with `dispatched`, so recipes call one namespace
(`losses.dmd_loss(...)`) and never a kernel directly. The choice, made per call:

  1. `use_triton(True | False)` if set (also a context manager: `with use_triton(True): ...`);
  2. else the environment variable STEPDISTILL_OPS = `triton` | `reference` (default `auto`);
  3. auto: Triton when the first tensor is on CUDA and Triton imports, the reference otherwise.

Forcing Triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter; how the tests cover the
kernels without a GPU); without it the call fails with a message saying so.

Imports run one way: `stepdistill_kernels` imports the references from `stepdistill.losses`; this module
imports the kernel package only when a fused loss is first called, so `import stepdistill` loads neither
Triton nor the kernels.
"""

from __future__ import annotations

import functools
import importlib
import os
from functools import lru_cache
from typing import Callable, TypeVar

import torch

_BACKENDS = ("auto", "triton", "reference")
_override: bool | None = None
F = TypeVar("F", bound=Callable[..., torch.Tensor])


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


def dispatched(reference: F, fused_name: str) -> F:
    """`reference` with the same signature and docstring, running `stepdistill_kernels.<fused_name>`
    instead whenever `triton_enabled(first argument)`. The fused function takes the same arguments and
    returns the same value (its parity tests say so)."""

    @functools.wraps(reference)
    def loss(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if triton_enabled(x):
            kernels = importlib.import_module("stepdistill_kernels")  # Triton loads on first use
            return getattr(kernels, fused_name)(x, *args, **kwargs)
        return reference(x, *args, **kwargs)

    loss.reference = reference  # type: ignore[attr-defined] - the pure function, for parity tests
    return loss  # type: ignore[return-value]


def set_fused_losses(mode: str) -> None:
    """A run's `train.fused_losses` (auto | on | off), set at setup."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"train.fused_losses={mode!r}: expected auto, on or off")


__all__ = ["dispatched", "set_fused_losses", "triton_enabled", "use_triton"]
