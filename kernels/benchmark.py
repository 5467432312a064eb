"""GPU benchmark shared by the kernels' bench.py: forward + backward of the eager reference,
`torch.compile(reference)` and the fused Triton Function, on the same arguments.

Reported per implementation: median time (`triton.testing.do_bench`, L2 flushed between runs), effective
bandwidth and the memory one step allocates above what was live before it. Effective bandwidth uses one
traffic model for all three: every tensor argument read once plus every requested gradient written once,
the least any implementation must move, so its ratio to the GPU's peak says how close each is to the limit.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .testing import max_errors

SHAPES: dict[str, tuple[int, ...]] = {
    "sd15_latent": (32, 4, 64, 64),
    "sdxl_latent": (8, 4, 128, 128),
    "imagenet64_pixels": (128, 3, 64, 64),
}
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def min_traffic(args: tuple[object, ...]) -> int:
    """Bytes an ideal fused forward + backward moves: tensor arguments read once, their gradients written once."""
    tensors = [a for a in args if torch.is_tensor(a)]
    return sum(_bytes(t) for t in tensors) + sum(_bytes(t) for t in tensors if t.requires_grad)


def _step(fn: Callable[..., torch.Tensor], args: tuple[object, ...]) -> Callable[[], None]:
    def step() -> None:
        fn(*args).backward()

    return step


def _time_and_memory(fn: Callable[..., torch.Tensor], args: tuple[object, ...]) -> dict[str, float]:
    import triton.testing

    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    step = _step(fn, args)
    step()  # warm-up: compiles the kernels and, for torch.compile, traces the graph
    ms = triton.testing.do_bench(step, grad_to_none=leaves, return_mode="median")
    for leaf in leaves:
        leaf.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return {"ms": ms, "step_extra_mb": (torch.cuda.max_memory_allocated() - before) / 2**20}


def bench_loss(
    reference: Callable[..., torch.Tensor], fused: Callable[..., torch.Tensor], args: tuple[object, ...]
) -> dict[str, Any]:
    """Parity (fused vs reference, compiled Triton) and timings of eager, torch.compile and fused fwd + bwd."""
    traffic = min_traffic(args)
    result: dict[str, Any] = {"min_traffic_mb": traffic / 2**20, "parity": max_errors(fused, reference, args)}
    impls = {"eager": reference, "fused": fused}
    try:
        impls["compiled"] = torch.compile(reference)
    except Exception as exc:  # noqa: BLE001 - a compile failure is a result, not a crash
        result["compiled_error"] = repr(exc)
    for name, fn in impls.items():
        try:
            r = _time_and_memory(fn, args)
        except Exception as exc:  # noqa: BLE001 - torch.compile may fail at first call, not at wrap time
            result[f"{name}_error"] = repr(exc)[:500]
            continue
        r["gb_per_s"] = traffic / (r["ms"] * 1e-3) / 1e9
        result[name] = r
    for base in ("eager", "compiled"):
        if base in result and "fused" in result:
            result[f"speedup_vs_{base}"] = result[base]["ms"] / result["fused"]["ms"]
    return result
