"""GPU benchmark of the fused score losses: forward + backward of the eager PyTorch reference,
`torch.compile(reference)` and the fused Triton kernel, at SD1.5 latents (32x4x64x64), SDXL latents
(8x4x128x128) and ImageNet-64 pixels (128x3x64x64), in fp32 and bf16.

    bash eval/gpu_check.sh                          # the whole grid, < 5 minutes on one GPU
    python eval/kernels_gpu.py --kernels dmd sid --shapes sd15_latent --dtypes bf16

Per case: parity of the compiled kernel with the reference, median time (`triton.testing.do_bench`),
effective GB/s (tensor arguments read once + gradients written once, over the time), memory one step
allocates, and the fused kernel's speed-up over eager and over torch.compile. Each kernel's benchmark
lives in `kernels/<kernel>/bench.py`; this script runs them and writes eval/results/kernels_gpu.json.
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
from stepdistill_kernels.benchmark import DTYPES, SHAPES

OUT = Path(__file__).resolve().parent / "results" / "kernels_gpu.json"


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

    results: dict[str, dict[str, object]] = {}
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
                print(f"{name:13s} {case:24s} {times}  fused {gbs:6.0f} GB/s  {speed}", flush=True)
        torch._dynamo.reset()  # one compiled graph cache per kernel keeps recompilation limits out of the way

    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": importlib.import_module("triton").__version__, "python": platform.python_version(),
            "shapes": {k: SHAPES[k] for k in args.shapes}, "wall_s": round(time.perf_counter() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"wrote {args.out} in {meta['wall_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
