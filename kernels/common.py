"""Torch-side helpers shared by the fused losses (no Triton import, so references stay importable anywhere)."""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from stepdistill.losses.weights import per_sample  # noqa: F401 - the kernels' functions take weights as the losses do


def as_rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Check that all tensors have the same (B, ...) shape and return each as a contiguous (B, N) view.

    The kernels index sample b, element n at `b * N + n`, so they need contiguous rows; a copy is made
    only for a non-contiguous input (Liger's `ensure_contiguous`).
    """
    shape = tensors[0].shape
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"expected (B, ...) tensors with B >= 1 and a feature dim, got shape {tuple(shape)}")
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(t.shape)} vs {tuple(shape)}")
        if t.device != tensors[0].device:
            raise ValueError(f"device mismatch: {t.device} vs {tensors[0].device}")
    return [t.contiguous().view(shape[0], -1) for t in tensors]


def is_one(grad_output: torch.Tensor) -> bool:
    """Liger's fast path: the backward of a scalar loss usually starts at exactly 1, so the saved
    gradient can be returned as is instead of paying one more full read + write to scale it.
    (`item()` is one host sync on CUDA, far cheaper than that pass.)"""
    return grad_output.numel() == 1 and grad_output.item() == 1.0


def fused_entry(reference: Callable[..., torch.Tensor], function: type[torch.autograd.Function]):
    """The fused loss's entry point: `function.apply` behind the reference's own signature and docstring
    (written once, in `stepdistill.losses`), arguments bound by name and defaults filled in, since
    `autograd.Function.apply` takes positional arguments only."""
    signature = inspect.signature(reference)

    @functools.wraps(reference)
    def fused(*args, **kwargs) -> torch.Tensor:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return function.apply(*bound.args)

    fused.__doc__ = f"Fused `{reference.__module__}.{reference.__name__}` (same arguments, same result).\n\n" + (
        reference.__doc__ or "")
    return fused
