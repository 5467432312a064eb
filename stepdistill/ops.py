"""Kernel dispatch: a loss runs its fused Triton kernel on CUDA and its PyTorch reference elsewhere.

`stepdistill.losses` wraps each loss that has a kernel with `dispatched`, so recipes call one namespace
(`losses.dmd_loss(...)`) and never a kernel directly. Whether the kernel is picked, per call:

  1. `use_triton(True | False)` if set (also a context manager: `with use_triton(True): ...`);
  2. else the environment variable STEPDISTILL_OPS = `triton` | `reference` (default `auto`);
  3. auto: Triton when the first tensor is on CUDA and Triton imports, the reference otherwise.

Over these rules sits the process's policy, `set_fused_losses` (a run's `train.fused_losses`):

  off   the reference always, whatever the rules above pick;
  on    the kernel whenever the rules pick it, unchecked;
  auto  (the default) as `on`, but the first call of each loss that picks the kernel checks it first: the
        kernel and the reference run on float32 copies of the call's first `PROBE_SAMPLES` samples, on seeded
        normal inputs of the same shapes and, for a 16-bit call, on its first samples in their own dtypes;
        the loss and every gradient must agree (`LOSS_RTOL`/`LOSS_ATOL`, `GRAD_RTOL`, `GRAD_RTOL_16BIT`). A
        kernel that raises (a compile error) or disagrees is replaced by the reference for that loss for the
        rest of the process, with one `FusedLossFallbackWarning`. Later calls only read the verdict: no host
        sync.

`backends()` says what each loss called so far ran; `fused_losses_record()` adds the policy (what a run's
results record). Forcing Triton on CPU tensors needs TRITON_INTERPRET=1 (Triton's interpreter; how the tests
cover the kernels without a GPU); without it the call fails with a message saying so (under `auto`, the
check catches that and falls back).

Imports run one way: `stepdistill_kernels` imports the references from `stepdistill.losses`; this module
imports the kernel package only when a fused loss is first called, so `import stepdistill` loads neither
Triton nor the kernels.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import warnings
from functools import lru_cache
from typing import Any, Callable, TypeVar

import torch

_BACKENDS = ("auto", "triton", "reference")
MODES = ("auto", "on", "off")
_override: bool | None = None
F = TypeVar("F", bound=Callable[..., torch.Tensor])

# The auto check's bounds. Kernel and reference compute in float32 from the same inputs and differ by
# summation order only: at most 2e-7 relative (loss) and 2e-7 relative L2 (gradients) under Triton's
# interpreter, up to 2 x 65,536 elements a probe. The bounds leave 500x for larger latents and GPU arithmetic;
# a real fault (a dropped term, a wrong scale, a skipped block) is far above them. 16-bit gradients are
# rounded to their dtype (the interpreter truncates bf16 where CUDA rounds: 4e-3 relative L2).
PROBE_SAMPLES = 2  # samples of the call's own arguments the check runs on
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-6  # |fused - reference| <= ATOL + RTOL |reference|
GRAD_RTOL = 1e-4  # ||fused - reference||_2 <= RTOL ||reference||_2 for every gradient (float32)
GRAD_RTOL_16BIT = 2e-2  # the same for gradients of fp16 / bf16 inputs

_mode = "auto"
_verdicts: dict[str, str | None] = {}  # loss -> None (kernel passed its check) or why it fell back
_ran: dict[str, list[str]] = {}  # loss -> what its calls ran, in order of first occurrence


class FusedLossFallbackWarning(RuntimeWarning):
    """A fused loss failed its check (`auto`) and the reference runs instead."""


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
    """Whether the rules (see the module docstring) pick the fused Triton kernel for a loss called on `x`:
    never under `set_fused_losses("off")`; under `auto`, a kernel that failed its check gives way to the
    reference even where this is True (`backends()` says what ran)."""
    if _mode == "off":
        return False
    if _override is not None:
        return _override
    backend = os.environ.get("STEPDISTILL_OPS", "auto").lower()
    if backend not in _BACKENDS:
        raise ValueError(f"STEPDISTILL_OPS={backend!r}: expected one of {', '.join(_BACKENDS)}")
    if backend != "auto":
        return backend == "triton"
    return x.is_cuda and _triton_importable()


def set_fused_losses(mode: str) -> None:
    """The process's policy for the fused losses (a run's `train.fused_losses`, set at setup): auto | on | off
    (see the module docstring). Starts afresh: earlier checks and the record of what ran are forgotten."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"train.fused_losses={mode!r}: expected auto, on or off")
    _mode = mode
    _verdicts.clear()
    _ran.clear()


def backends() -> dict[str, str]:
    """What each fused-kernel loss called so far in this process ran: "fused", "reference" or
    "reference (fallback: <reason>)" (several, joined by " + ", if its calls differed, e.g. CUDA and CPU)."""
    return {name: " + ".join(ran) for name, ran in _ran.items()}


def fused_losses_record() -> dict[str, Any]:
    """`{"mode": the policy, "backends": backends()}`: the `fused_losses` entry of a run's results."""
    return {"mode": _mode, "backends": backends()}


def _record(name: str, what: str) -> None:
    ran = _ran.setdefault(name, [])
    if what not in ran:
        ran.append(what)


def _probe(value: Any, batch: int, grad: bool, keep_dtype: bool = False) -> Any:
    """A detached copy of a tensor argument (float32 unless `keep_dtype`; the layout kept), cut to its first
    PROBE_SAMPLES samples if it has the batch dim, requiring grad if `grad` or the argument does. Anything else
    as it is."""
    if not torch.is_tensor(value):
        return value
    t = value.detach()
    if t.ndim >= 1 and t.shape[0] == batch:
        t = t[:PROBE_SAMPLES]
    if not t.is_floating_point():
        return t.clone()
    t = t.clone() if keep_dtype else t.to(torch.float32, copy=True)
    return t.requires_grad_(grad or value.requires_grad)


def _seeded_normal(value: Any, like: torch.Tensor, generator: torch.Generator) -> Any:
    """An input-sized float tensor (`like`'s shape) replaced by seeded standard-normal entries, in its own
    dtype, layout and device; anything else (scalars, (B,) weights) as it is."""
    if not (torch.is_tensor(value) and value.is_floating_point() and value.shape == like.shape):
        return value
    entries = torch.randn(value.shape, generator=generator).to(value.device)
    return torch.empty_like(value).copy_(entries).requires_grad_(value.requires_grad)


def _probes(x: torch.Tensor, args: tuple, kwargs: dict) -> list[tuple[str, tuple, dict, float]]:
    """(what it is, arguments, keyword arguments, gradient tolerance) for each input the check runs: the call's
    first samples in float32; seeded normal inputs of the same shapes (the call's own values may make the loss
    trivially zero, e.g. a fake score still equal to the teacher at step 1); and, when the call has 16-bit
    tensors, its first samples in their own dtypes (the kernels the call itself compiles)."""
    batch = x.shape[0]

    def copies(keep_dtype: bool) -> tuple[tuple, dict]:
        return ((_probe(x, batch, True, keep_dtype), *(_probe(a, batch, False, keep_dtype) for a in args)),
                {k: _probe(v, batch, False, keep_dtype) for k, v in kwargs.items()})

    first, named = copies(False)
    generator = torch.Generator().manual_seed(0)
    seeded = tuple(_seeded_normal(a, first[0], generator) for a in first)
    out = [(f"the call's first {PROBE_SAMPLES} samples", first, named, GRAD_RTOL),
           ("seeded normal inputs of the call's shapes", seeded,
            {k: _seeded_normal(v, first[0], generator) for k, v in named.items()}, GRAD_RTOL)]
    if any(torch.is_tensor(a) and a.dtype in (torch.float16, torch.bfloat16) for a in (x, *args, *kwargs.values())):
        out.append(("the call's first samples in its own dtypes", *copies(True), GRAD_RTOL_16BIT))
    return out


def _relative_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| over the finite entries (inf where the non-finite ones differ)."""
    finite = torch.isfinite(expected)
    if not torch.equal(finite, torch.isfinite(actual)):
        return math.inf
    diff = float((actual[finite] - expected[finite]).norm())
    norm = float(expected[finite].norm())
    return 0.0 if diff == 0 else diff / norm if norm else math.inf


def _compare(names: list[str], fused: tuple, reference: tuple, grad_rtol: float) -> str | None:
    """None when (loss, gradients) of the kernel match the reference's, else the measured difference."""
    (loss_f, grads_f), (loss_r, grads_r) = fused, reference
    lf, lr = float(loss_f), float(loss_r)
    if not (math.isclose(lf, lr, rel_tol=LOSS_RTOL, abs_tol=LOSS_ATOL) or (math.isnan(lf) and math.isnan(lr))):
        return f"loss {lf:.9g}, reference {lr:.9g} (beyond rtol {LOSS_RTOL:g} / atol {LOSS_ATOL:g})"
    for name, gf, gr in zip(names, grads_f, grads_r):
        error = _relative_l2(gf.float(), gr.float())
        if not error <= grad_rtol:
            return f"gradient of {name}: relative L2 difference {error:.3g} (beyond {grad_rtol:g})"
    return None


def _loss_and_grads(fn: Callable[..., torch.Tensor], args: tuple, kwargs: dict, leaves: list[torch.Tensor]):
    loss = fn(*args, **kwargs)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return loss.detach(), [torch.zeros_like(leaf) if g is None else g for leaf, g in zip(leaves, grads)]


def _check(reference: Callable[..., torch.Tensor], fused_name: str, x: torch.Tensor, args: tuple,
           kwargs: dict) -> str | None:
    """The `auto` check of one loss: None when the kernel agrees with the reference on every input of
    `_probes`, else why not (its exception, or the difference measured and on what)."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        for what, probe_args, probe_kwargs, grad_rtol in _probes(x, args, kwargs):
            named = [*zip(_parameter_names(reference, len(probe_args)), probe_args), *probe_kwargs.items()]
            leaves = [(n, t) for n, t in named if torch.is_tensor(t) and t.requires_grad]
            tensors = [t for _, t in leaves]
            expected = _loss_and_grads(reference, probe_args, probe_kwargs, tensors)  # its errors are the caller's
            try:
                actual = _loss_and_grads(_fused(fused_name), probe_args, probe_kwargs, tensors)
            except Exception as error:  # a compile error, a launch failure, Triton missing
                lines = str(error).strip().splitlines()
                return type(error).__name__ + (f": {lines[0][:300]}" if lines else "")
            mismatch = _compare([n for n, _ in leaves], actual, expected, grad_rtol)
            if mismatch is not None:
                return f"{mismatch} on {what}"
    return None


def _parameter_names(fn: Callable, count: int) -> list[str]:
    return list(inspect.signature(fn).parameters)[:count]


def _fallback_warning(name: str, reason: str) -> str:
    return (f"the fused Triton kernel of {name} failed its check against the PyTorch reference ({reason}); "
            f"{name} runs the reference for the rest of this process. Set train.fused_losses=on to run the "
            f"kernel unchecked, or train.fused_losses=off for the reference everywhere")


def dispatched(reference: F, fused_name: str) -> F:
    """`reference` with the same signature and docstring, running `stepdistill_kernels.<fused_name>`
    instead whenever `triton_enabled(first argument)`, under the policy of `set_fused_losses` (checked
    once under `auto`). The fused function takes the same arguments and returns the same value (its parity
    tests say so)."""
    name = reference.__name__

    @functools.wraps(reference)
    def loss(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not triton_enabled(x):
            _record(name, "reference")
            return reference(x, *args, **kwargs)
        if _mode == "auto" and name not in _verdicts and not _capturing(x):
            check = torch.compiler.disable(_check) if torch.compiler.is_compiling() else _check  # eager, always
            reason = _verdicts[name] = check(reference, fused_name, x, args, kwargs)
            if reason is not None:
                warnings.warn(_fallback_warning(name, reason), FusedLossFallbackWarning, stacklevel=2)
        reason = _verdicts.get(name) if _mode == "auto" else None
        if reason is not None:
            _record(name, f"reference (fallback: {reason})")
            return reference(x, *args, **kwargs)
        _record(name, "fused")
        return _fused(fused_name)(x, *args, **kwargs)

    loss.reference = reference  # type: ignore[attr-defined] - the pure function, for parity tests
    return loss  # type: ignore[return-value]


def _fused(fused_name: str) -> Callable[..., torch.Tensor]:
    return getattr(importlib.import_module("stepdistill_kernels"), fused_name)  # Triton loads on first use


def _capturing(x: torch.Tensor) -> bool:
    """Inside a CUDA graph capture, where the check's host reads cannot run: the kernel runs unchecked and
    the first call outside a capture checks it."""
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


__all__ = ["FusedLossFallbackWarning", "MODES", "backends", "dispatched", "fused_losses_record", "set_fused_losses",
           "triton_enabled", "use_triton"]
