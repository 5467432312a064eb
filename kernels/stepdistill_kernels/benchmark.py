"""GPU benchmark shared by the kernels' bench.py: forward + backward of the eager reference,
`torch.compile(reference)` and the fused Triton Function, on the same arguments.

Reported per implementation: median time (`triton.testing.do_bench`, L2 flushed between runs), effective
bandwidth and the memory one step allocates above what was live before it. Effective bandwidth uses one
traffic model for all three: every tensor argument read once plus every requested gradient written once,
the least any implementation must move, so its ratio to the GPU's peak says how close each is to the limit.

Each case compiles the reference afresh with `dynamic=False` (after `torch._dynamo.reset()`), as a training
run with one latent shape does; a compiled function reused across shapes would fall back to dynamic-shape
kernels after the first and flatter the fused kernels. The fused forward + backward is also captured in a
CUDA graph and replayed (the property a graph-captured training step needs; the replay's time shows what
is left once launch overhead is gone).

Shape classes: a case is `bandwidth-bound` when moving its minimum traffic at the GPU's peak bandwidth
takes at least `BANDWIDTH_BOUND_US` (a few launches' worth of fixed cost), `launch-bound` otherwise; there
the times measure launches, not bytes.

The grid's results (kernel -> "shape/dtype" -> case, as `eval/kernels_gpu.py` writes them) are summarised per
shape class (`summarise`) and checked against the goals (`goals`): fused >= 2x eager at every shape; >= 1.2x
torch.compile and >= 70% of peak bandwidth at the large and video latents (`LARGE`); CUDA-graph capture of
forward + backward everywhere.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .testing import max_errors

SHAPES: dict[str, tuple[int, ...]] = {
    "sd15_latent": (32, 4, 64, 64),
    "sdxl_latent": (8, 4, 128, 128),
    "imagenet64_pixels": (128, 3, 64, 64),
    "large_latent": (64, 4, 128, 128),
    "video_latent": (1, 16, 21, 60, 104),  # a 21-frame, 480x832 video latent (16 channels, 8x spatial VAE)
}
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Peak DRAM bandwidth from the vendors' data sheets (GB/s), matched against torch.cuda.get_device_name().
PEAK_GB_PER_S: dict[str, float] = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100-SXM4-80GB": 2039.0,
                                   "A100": 1555.0, "L40S": 864.0, "RTX 4090": 1008.0}
BANDWIDTH_BOUND_US = 10.0


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def min_traffic(args: tuple[object, ...]) -> int:
    """Bytes an ideal fused forward + backward moves: tensor arguments read once, their gradients written once."""
    tensors = [a for a in args if torch.is_tensor(a)]
    return sum(_bytes(t) for t in tensors) + sum(_bytes(t) for t in tensors if t.requires_grad)


def peak_gb_per_s(device_name: str) -> float | None:
    """The data-sheet peak bandwidth of a GPU by name (the first key contained in it), None if unknown."""
    return next((v for k, v in PEAK_GB_PER_S.items() if k in device_name), None)


def shape_class(traffic_bytes: int, peak: float | None) -> str | None:
    """`bandwidth-bound` or `launch-bound` (see the module docstring); None without a known peak."""
    if peak is None:
        return None
    return "bandwidth-bound" if traffic_bytes / (peak * 1e9) * 1e6 >= BANDWIDTH_BOUND_US else "launch-bound"


def _leaves(args: tuple[object, ...]) -> list[torch.Tensor]:
    return [a for a in args if torch.is_tensor(a) and a.requires_grad]


def _step(fn: Callable[..., torch.Tensor], args: tuple[object, ...]) -> Callable[[], None]:
    def step() -> None:
        fn(*args).backward()

    return step


def _time_and_memory(fn: Callable[..., torch.Tensor], args: tuple[object, ...]) -> dict[str, float]:
    import triton.testing

    leaves = _leaves(args)
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


def graph_capture(fn: Callable[..., torch.Tensor], args: tuple[object, ...]) -> dict[str, Any]:
    """Capture forward + backward in one CUDA graph, replay it, and compare its gradients with an uncaptured
    step's. Raises if capture fails (a host sync, an allocation the graph cannot own)."""
    import triton.testing

    leaves = _leaves(args)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up on a side stream, as torch.cuda.graphs asks
        for _ in range(2):
            for leaf in leaves:
                leaf.grad = None
            fn(*args).backward()
    torch.cuda.current_stream().wait_stream(side)
    expected = [leaf.grad.clone() for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*args).backward()  # the leaves' .grad now live in the graph's pool and are rewritten by each replay
    graph.replay()
    torch.cuda.synchronize()
    diff = max(float((leaf.grad.float() - e.float()).abs().max()) for leaf, e in zip(leaves, expected))
    ms = triton.testing.do_bench(graph.replay, return_mode="median")
    for leaf in leaves:
        leaf.grad = None
    return {"captured": True, "replay_ms": ms, "max_grad_diff_vs_uncaptured": diff}


def bench_loss(
    reference: Callable[..., torch.Tensor], fused: Callable[..., torch.Tensor], args: tuple[object, ...]
) -> dict[str, Any]:
    """Parity (fused vs reference, compiled Triton), timings of eager, torch.compile and fused fwd + bwd, and
    the fused step's CUDA-graph capture."""
    traffic = min_traffic(args)
    peak = peak_gb_per_s(torch.cuda.get_device_name()) if torch.cuda.is_available() else None
    result: dict[str, Any] = {"min_traffic_mb": traffic / 2**20, "shape_class": shape_class(traffic, peak),
                              "parity": max_errors(fused, reference, args)}
    impls = {"eager": reference, "fused": fused}
    torch._dynamo.reset()  # a fresh compile for this shape, not a cached dynamic-shape graph
    try:
        impls["compiled"] = torch.compile(reference, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - a compile failure is a result, not a crash
        result["compiled_error"] = repr(exc)
    for name, fn in impls.items():
        try:
            r = _time_and_memory(fn, args)
        except Exception as exc:  # noqa: BLE001 - torch.compile may fail at first call, not at wrap time
            result[f"{name}_error"] = repr(exc)[:500]
            continue
        r["gb_per_s"] = traffic / (r["ms"] * 1e-3) / 1e9
        if peak is not None:
            r["fraction_of_peak"] = r["gb_per_s"] / peak
        result[name] = r
    for base in ("eager", "compiled"):
        if base in result and "fused" in result:
            result[f"speedup_vs_{base}"] = result[base]["ms"] / result["fused"]["ms"]
    try:
        result["cuda_graph"] = graph_capture(fused, args)
    except Exception as exc:  # noqa: BLE001 - a failed capture is the finding
        result["cuda_graph"] = {"captured": False, "error": repr(exc)[:500]}
    return result


LARGE = ("large_latent", "video_latent")  # where the bandwidth goals apply


def summarise(results: dict[str, dict[str, dict]]) -> dict[str, dict[str, float | int]]:
    """Per shape class: cases, and the geometric-mean speed-ups and median fraction of peak of the fused kernels."""
    import statistics

    groups: dict[str, list[dict]] = {}
    for cases in results.values():
        for r in cases.values():
            groups.setdefault(r.get("shape_class") or "unknown", []).append(r)
    summary = {}
    for cls, rs in groups.items():
        row: dict[str, float | int] = {"cases": len(rs)}
        for key in ("speedup_vs_eager", "speedup_vs_compiled"):
            vals = [r[key] for r in rs if key in r]
            if vals:
                row[f"{key}_geomean"] = statistics.geometric_mean(vals)
                row[f"{key}_min"] = min(vals)
        fractions = [r["fused"]["fraction_of_peak"] for r in rs if "fraction_of_peak" in r.get("fused", {})]
        if fractions:
            row["fused_fraction_of_peak_median"] = statistics.median(fractions)
        summary[cls] = row
    return summary


def goals(results: dict[str, dict[str, dict]]) -> dict[str, bool | None]:
    """The benchmark's goals, each True / False (None where no case measured it)."""
    def every(cases, test):
        vals = [test(r) for r in cases]
        return all(vals) if vals else None

    flat = [r for cases in results.values() for r in cases.values()]
    large = [r for cases in results.values() for case, r in cases.items() if case.split("/")[0] in LARGE]
    return {
        "fused_2x_eager_every_shape": every(flat, lambda r: r.get("speedup_vs_eager", 0) >= 2.0),
        "fused_1.2x_compile_large": every(large, lambda r: r.get("speedup_vs_compiled", 0) >= 1.2),
        "fused_70pct_peak_large": every(large, lambda r: r.get("fused", {}).get("fraction_of_peak", 0) >= 0.7),
        "cuda_graph_all": every(flat, lambda r: r.get("cuda_graph", {}).get("captured", False)),
    }
