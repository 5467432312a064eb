"""The GPU benchmark's bookkeeping, checked on CPU with the timers stubbed: a fresh fixed-shape compile per
case, the shape classes, the peak-bandwidth table and the goals eval/kernels_gpu.py reports
(`stepdistill_kernels.benchmark`)."""


import pytest
import torch

from stepdistill_kernels import benchmark
from stepdistill_kernels.dmd.bench import make_args
from stepdistill_kernels.dmd.reference import dmd_loss



def test_every_case_compiles_the_reference_afresh_for_its_fixed_shape(monkeypatch):
    compiles, resets = [], []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiles.append(kw) or fn)
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(benchmark, "_time_and_memory", lambda fn, args: {"ms": 1.0, "step_extra_mb": 0.0})
    monkeypatch.setattr(benchmark, "graph_capture", lambda fn, args: {"captured": True})
    for shape in [(2, 3, 4, 4), (3, 3, 8, 8)]:
        r = benchmark.bench_loss(dmd_loss, dmd_loss, make_args(shape, torch.float32, "cpu"))
        assert {"eager", "compiled", "fused", "speedup_vs_compiled", "cuda_graph"} <= set(r)
    assert compiles == [{"dynamic": False}] * 2 and len(resets) == 2


def test_shape_classes_and_peak_bandwidth():
    assert benchmark.peak_gb_per_s("NVIDIA H200") == 4800.0
    assert benchmark.peak_gb_per_s("NVIDIA H100 80GB HBM3") == 3350.0
    assert benchmark.peak_gb_per_s("NVIDIA H100 PCIe") == 2000.0
    assert benchmark.peak_gb_per_s("a future GPU") is None and benchmark.shape_class(10**9, None) is None
    traffic = {name: benchmark.min_traffic(make_args(shape, torch.bfloat16, "meta"))
               for name, shape in benchmark.SHAPES.items()}
    assert traffic["sd15_latent"] == 4 * 32 * 4 * 64 * 64 * 2  # x, x0_real, x0_fake read, grad x written
    assert benchmark.shape_class(traffic["sd15_latent"], 4800.0) == "launch-bound"
    assert benchmark.shape_class(4800 * 10**9 * 20 // 10**6, 4800.0) == "bandwidth-bound"  # 20 us at peak


def case(eager, compiled, fraction, captured, cls="bandwidth-bound"):
    return {"shape_class": cls, "speedup_vs_eager": eager, "speedup_vs_compiled": compiled,
            "fused": {"fraction_of_peak": fraction}, "cuda_graph": {"captured": captured}}


@pytest.mark.parametrize("broken, goal", [(None, None), ("eager", "fused_2x_eager_every_shape"),
                                          ("compiled", "fused_1.2x_compile_large"),
                                          ("peak", "fused_70pct_peak_large"), ("graph", "cuda_graph_all")])
def test_goals_and_summary(broken, goal):
    results = {"dmd": {"sd15_latent/bf16": case(3.0, 1.0, 0.1, True, "launch-bound"),
                       "large_latent/bf16": case(2.5, 1.3, 0.8, True),
                       "video_latent/bf16": case(2.5, 1.3, 0.8, True)}}
    bad = results["dmd"]["video_latent/bf16"]
    if broken == "eager":
        bad["speedup_vs_eager"] = 1.9
    elif broken == "compiled":
        bad["speedup_vs_compiled"] = 1.1
    elif broken == "peak":
        bad["fused"]["fraction_of_peak"] = 0.6
    elif broken == "graph":
        bad["cuda_graph"] = {"captured": False, "error": "..."}
    met = benchmark.goals(results)
    assert {k for k, v in met.items() if not v} == ({goal} if goal else set())
    summary = benchmark.summarise(results)
    assert summary["launch-bound"]["cases"] == 1 and summary["bandwidth-bound"]["cases"] == 2
