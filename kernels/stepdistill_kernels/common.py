"""Torch-side helpers shared by the fused losses (no Triton import, so references stay importable anywhere)."""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from stepdistill.losses.weights import per_sample  # noqa: F401 - the kernels' functions take weights as the losses do


def sample_dense(t: torch.Tensor) -> bool:
    """Whether every sample of the (B, ...) tensor `t` occupies one dense block of N = numel / B elements,
    sample b at b * N from the storage offset: contiguous, channels_last, channels_last_3d or any other
    permutation of the non-batch dims. The losses reduce over whole samples, so the order inside a block is
    irrelevant as long as every input shares it."""
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape[1:], t.stride()[1:]) if sz > 1):
        if stride != expected:  # (sorted by stride) a gap, or two dims overlapping
            return False
        expected *= size
    return t.shape[0] == 1 or t.stride(0) == expected


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same element order in memory (strides of size-1 dims do not matter)."""
    return a.shape == b.shape and all(sa == sb for sa, sb, n in zip(a.stride(), b.stride(), a.shape) if n > 1)


def in_layout(tensors: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Check that all tensors have the same (B, ...) shape and device, and return them in one shared
    sample-dense layout: the first tensor's if it has one (a channels_last generator output stays as it is),
    contiguous otherwise. Only a tensor not already in that layout is copied (Liger's `ensure_contiguous`)."""
    shape = tensors[0].shape
    if len(shape) < 2 or shape[0] == 0:
        raise ValueError(f"expected (B, ...) tensors with B >= 1 and a feature dim, got shape {tuple(shape)}")
    for t in tensors[1:]:
        if t.shape != shape:
            raise ValueError(f"shape mismatch: {tuple(t.shape)} vs {tuple(shape)}")
        if t.device != tensors[0].device:
            raise ValueError(f"device mismatch: {t.device} vs {tensors[0].device}")
    lead = tensors[0] if sample_dense(tensors[0]) else tensors[0].contiguous()
    return [lead] + [t if sample_dense(t) and same_layout(t, lead) else torch.empty_like(lead, dtype=t.dtype).copy_(t)
                     for t in tensors[1:]]


def rows(t: torch.Tensor) -> torch.Tensor:
    """The (B, N) row-major view of a sample-dense tensor's storage: what the kernels index."""
    batch = t.shape[0]
    return t.as_strided((batch, t.numel() // batch), (t.numel() // batch, 1))


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
