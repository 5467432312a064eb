"""What an autograd graph keeps for backward: the memory figure the fused losses are judged on (CPU-measurable)."""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass
class SavedBytes:
    """Bytes packed by autograd between forward and backward.

    saved: everything packed (numel * element_size of each saved tensor);
    new:   the part not sharing storage with an argument, i.e. memory that would not exist without the graph
           (saving an input only extends the life of a tensor the caller already holds).
    """

    saved: int
    new: int


def saved_bytes(loss_fn: Callable[..., torch.Tensor], *args: object) -> SavedBytes:
    """Run `loss_fn(*args)` under `torch.autograd.graph.saved_tensors_hooks` and total what is packed."""
    arg_storages = {a.untyped_storage().data_ptr() for a in args if torch.is_tensor(a)}
    saved = new = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal saved, new
        size = t.numel() * t.element_size()
        saved += size
        if t.untyped_storage().data_ptr() not in arg_storages:
            new += size
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(*args)
    return SavedBytes(saved, new)


def loss_and_grads(
    loss_fn: Callable[..., torch.Tensor], args: tuple[object, ...], scale: float = 1.0
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """The loss and, after `(scale * loss).backward()`, the .grad of every tensor argument that requires grad
    (scale != 1 exercises the grad_output != 1 path)."""
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    for leaf in leaves:
        leaf.grad = None
    loss = loss_fn(*args)
    (loss * scale if scale != 1.0 else loss).backward()
    return loss.detach(), [leaf.grad for leaf in leaves]


def max_errors(
    fused: Callable[..., torch.Tensor], reference: Callable[..., torch.Tensor], args: tuple[object, ...],
    scale: float = 1.0,
) -> dict[str, float]:
    """Largest absolute differences fused - reference: the loss, and each gradient (also relative to the
    reference gradient's largest entry)."""
    loss_f, grads_f = loss_and_grads(fused, args, scale)
    loss_r, grads_r = loss_and_grads(reference, args, scale)
    out = {"loss": float((loss_f - loss_r).abs()), "loss_value": float(loss_r)}
    for k, (gf, gr) in enumerate(zip(grads_f, grads_r)):
        err = float((gf.float() - gr.float()).abs().max())
        out[f"grad{k}"] = err
        out[f"grad{k}_rel"] = err / max(float(gr.float().abs().max()), 1e-30)
    return out


LAYOUTS = ("contiguous", "strided", "channels_last")


def randn(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str, *, layout: str = "contiguous",
    requires_grad: bool = False,
) -> torch.Tensor:
    """A standard-normal (B, ...) leaf tensor in one of `LAYOUTS`: `strided` is a non-contiguous view (every
    other element of the last dim of a twice-wider tensor), the case the fused functions must copy;
    `channels_last` is channels_last (4-D) or channels_last_3d (5-D), the case they must take as it is."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "strided":
        t = torch.randn(*shape[:-1], 2 * shape[-1], dtype=dtype, device=device)[..., ::2]
    else:
        t = torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        formats = {4: torch.channels_last, 5: torch.channels_last_3d}
        if len(shape) not in formats:
            raise ValueError(f"channels_last needs a 4-D or 5-D shape, got {shape}")
        t = t.contiguous(memory_format=formats[len(shape)])
    return t.requires_grad_(requires_grad)


class GridRecorder:
    """Stands in for a @triton.jit kernel: records each launch's grid instead of running it."""

    def __init__(self, grids: list[tuple[int, ...]]):
        self.grids = grids

    def __getitem__(self, grid: tuple[int, ...]):
        self.grids.append(tuple(grid))
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def recorded_launches(name: str) -> Iterator[list[tuple[int, ...]]]:
    """Within the block, loss `name`'s kernels (and the shared total) record their grids instead of running:
    the launches of a forward + backward, and whether CUDA would accept each grid, at any size, on CPU."""
    from . import launch

    module = importlib.import_module(f"{__package__}.{name}.triton_kernel")
    grids: list[tuple[int, ...]] = []
    saved = {}
    targets = [(module, attr) for attr in dir(module) if attr.endswith("_kernel")] + [(launch, "total_kernel")]
    try:
        for owner, attr in targets:
            saved[(owner, attr)] = getattr(owner, attr)
            setattr(owner, attr, GridRecorder(grids))
        saved[(module, "check_launchable")] = module.check_launchable
        module.check_launchable = lambda *args: None
        yield grids
    finally:
        for (owner, attr), value in saved.items():
            setattr(owner, attr, value)


def in_dtype(args: tuple[object, ...], dtype: torch.dtype) -> tuple[object, ...]:
    """The same arguments with every input-sized tensor as a fresh `dtype` leaf (same requires_grad)."""
    return tuple(a.detach().to(dtype).requires_grad_(a.requires_grad) if torch.is_tensor(a) and a.ndim > 1 else a
                 for a in args)


def loss_scale_errors(reference: Callable[..., torch.Tensor], fused: Callable[..., torch.Tensor],
                      args16: tuple[object, ...], scale: float = 65536.0) -> list[dict[str, float]]:
    """fp16 under a loss scale, per gradient: relative L2 error against a float32 computation from the same
    fp16 values, and entries flushed to zero where that computation is not, for eager and fused."""
    _, truth = loss_and_grads(reference, in_dtype(args16, torch.float32), scale)
    _, eager = loss_and_grads(reference, in_dtype(args16, torch.float16), scale)
    _, fused_grads = loss_and_grads(fused, in_dtype(args16, torch.float16), scale)
    return [{f"{impl}_{key}": value for impl, g in (("eager", e), ("fused", f)) for key, value in (
                ("rel_l2", float((g.float() - t).norm() / t.norm())), ("flushed", int(((g == 0) & (t != 0)).sum())))}
            for t, e, f in zip(truth, eager, fused_grads, strict=True)]
