"""GPU benchmark of the fused score losses: forward + backward of the eager PyTorch reference,
`torch.compile(reference, dynamic=False)` (compiled afresh per case) and the fused Triton kernel, at SD1.5
latents (32x4x64x64), SDXL latents (8x4x128x128), ImageNet-64 pixels (128x3x64x64), large latents
(64x4x128x128) and a video latent (1x16x21x60x104), in fp32 and bf16; and the fused step captured in a
CUDA graph.

    bash eval/gpu_check.sh                          # the whole grid, < 5 minutes on one GPU
    python eval/kernels_gpu.py --kernels dmd sid --shapes sd15_latent --dtypes bf16

Per case: parity of the compiled kernel with the reference, median time (`triton.testing.do_bench`),
effective GB/s (tensor arguments read once + gradients written once, over the time), memory one step
allocates, and the fused kernel's speed-up over eager and over torch.compile. Each kernel's benchmark
lives in `kernels/stepdistill_kernels/<kernel>/bench.py`; this script runs them, summarises them per shape class
(launch-bound / bandwidth-bound) and checks the goals below (`stepdistill_kernels.benchmark`: `summarise`,
`goals`), and writes eval/results/kernels_gpu.json.

Goals: fused >= 2x eager at every shape; >= 1.2x torch.compile and >= 70% of peak bandwidth at the large
and video latents; CUDA-graph capture of forward + backward for all four losses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from stepdistill_kernels import KERNELS
from stepdistill_kernels.benchmark import DTYPES, SHAPES, goals, peak_gb_per_s, summarise

OUT = Path(__file__).resolve().parent / "results" / "kernels_gpu.json"


def save(out: Path, meta: dict, results: dict[str, dict[str, dict]]) -> None:
    """Write the results with their summary and goals, atomically (a killed run leaves a whole file)."""
    payload = {"meta": meta, "summary_by_shape_class": summarise(results), "goals": goals(results), "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("kernels_gpu.py: no CUDA device visible; the GPU benchmark needs one "
              "(CPU coverage: `python eval/kernels_cpu.py` and `pytest tests/kernels`).", file=sys.stderr)
        return 2

    device = torch.cuda.get_device_name()
    meta = {"device": device, "peak_gb_per_s": peak_gb_per_s(device), "torch": torch.__version__,
            "triton": importlib.import_module("triton").__version__, "python": platform.python_version(),
            "shapes": {k: SHAPES[k] for k in args.shapes}, "dtypes": args.dtypes}
    results: dict[str, dict[str, dict]] = {}
    start = time.perf_counter()
    for name in args.kernels:
        bench = importlib.import_module(f"stepdistill_kernels.{name}.bench")
        for shape_name in args.shapes:
            for dtype_name in args.dtypes:
                case = f"{shape_name}/{dtype_name}"
                torch.manual_seed(0)
                r = bench.bench(SHAPES[shape_name], DTYPES[dtype_name])
                results.setdefault(name, {})[case] = r
                times = " ".join(f"{k} {r[k]['ms'] * 1e3:7.1f}us" for k in ("eager", "compiled", "fused") if k in r)
                speed = " ".join(f"x{r[k]:.2f} {k[11:]}" for k in ("speedup_vs_eager", "speedup_vs_compiled") if k in r)
                gbs = r.get("fused", {}).get("gb_per_s", float("nan"))
                graph = "graph ok" if r.get("cuda_graph", {}).get("captured") else "graph FAILED"
                print(f"{name:13s} {case:24s} {times}  fused {gbs:6.0f} GB/s  {speed}  {graph}", flush=True)
                meta["wall_s"] = round(time.perf_counter() - start, 1)
                save(args.out, meta, results)  # after every case: a run cut short keeps what it measured

    summary, met = summarise(results), goals(results)
    for cls, row in summary.items():
        print(f"{cls}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    print("goals: " + ", ".join(f"{k} {v}" for k, v in met.items()))
    print(f"wrote {args.out} in {meta['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
