"""CPU evaluation of the fused score losses: what autograd keeps for backward, fused vs eager, and the
parity of the Triton kernels (run by Triton's interpreter) with their PyTorch references.

    python eval/kernels_cpu.py            # ~1 CPU minute; writes eval/results/kernels_cpu.json

Saved bytes: every tensor packed by `torch.autograd.graph.saved_tensors_hooks` during the forward pass
(numel * element_size), and the part of it that is new memory (not sharing storage with an argument:
saving an argument only extends the life of a tensor the caller holds anyway), in bytes. `input_bytes`
is one x-sized tensor. Parity: largest |fused - reference| of the loss and of each gradient of 3.7 * loss.
Per loss also: the kernel launches of one forward + backward (grids recorded, not run), and, at 8x4x64x64
in fp16 under GradScaler's 65536, each gradient's relative L2 error against a float32 computation from the
same values and its entries flushed to zero, eager vs fused.
"""

from __future__ import annotations

import os
import sys

# triton reads this when it is first imported (its own tl.sum is decorated then): set it before anything else.
os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from stepdistill_kernels import KERNELS  # noqa: E402
from stepdistill_kernels.testing import loss_scale_errors, max_errors, recorded_launches, saved_bytes  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "kernels_cpu.json"
SHAPES = [(3, 5, 7, 9), (2, 37), (2, 4, 64, 64)]  # odd (B, C, H, W), odd (B, D), an SD1.5 latent pair
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def evaluate(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, object]:
    bench = importlib.import_module(f"stepdistill_kernels.{name}.bench")
    torch.manual_seed(0)
    args = bench.make_args(shape, dtype, "cpu")
    fused, eager = saved_bytes(bench.FUSED, *args), saved_bytes(bench.REFERENCE, *args)
    x = args[0]
    return {
        "input_bytes": x.numel() * x.element_size(),
        "fused_saved_bytes": fused.saved, "fused_new_bytes": fused.new,
        "eager_saved_bytes": eager.saved, "eager_new_bytes": eager.new,
        "parity": max_errors(bench.FUSED, bench.REFERENCE, args, scale=3.7),
    }


def fp16_loss_scale(name: str, shape: tuple[int, ...] = (8, 4, 64, 64), scale: float = 65536.0) -> list[dict]:
    """Per gradient: relative L2 error and zero-flushed entries of eager and fused fp16 (see the docstring)."""
    bench = importlib.import_module(f"stepdistill_kernels.{name}.bench")
    torch.manual_seed(0)
    return loss_scale_errors(bench.REFERENCE, bench.FUSED, bench.make_args(shape, torch.float16, "cpu"), scale)


def launches(name: str) -> int:
    """Kernel launches of one forward + backward."""
    bench = importlib.import_module(f"stepdistill_kernels.{name}.bench")
    with recorded_launches(name) as grids:
        bench.FUSED(*bench.make_args((2, 4, 64, 64), torch.float32, "cpu")).backward()
    return len(grids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    results = {name: {f"{'x'.join(map(str, s))}/{d}": evaluate(name, s, dt) for s in SHAPES for d, dt in DTYPES.items()}
               for name in KERNELS}
    extra = {name: {"launches_fwd_bwd": launches(name), "fp16_loss_scale_65536": fp16_loss_scale(name)}
             for name in KERNELS}
    meta = {"torch": torch.__version__, "triton": importlib.import_module("triton").__version__,
            "python": platform.python_version(), "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "per_loss": extra, "results": results}, indent=2) + "\n")
    print(f"{'kernel':13s} {'case':16s} {'input KiB':>9s} {'fused saved/new':>16s} {'eager saved/new':>16s}  "
          "max grad rel err")
    for name, cases in results.items():
        for case, r in cases.items():
            rel = max(v for k, v in r["parity"].items() if k.endswith("_rel"))
            kib = [r[k] / 1024 for k in ("input_bytes", "fused_saved_bytes", "fused_new_bytes", "eager_saved_bytes",
                                         "eager_new_bytes")]
            print(f"{name:13s} {case:16s} {kib[0]:9.2f} {kib[1]:8.2f}/{kib[2]:7.2f} {kib[3]:8.2f}/{kib[4]:7.2f}  {rel:.1e}")
    for name, r in extra.items():
        errs = ", ".join(f"{g['eager_rel_l2']:.1e}/{g['fused_rel_l2']:.1e}" for g in r["fp16_loss_scale_65536"])
        print(f"{name:13s} launches {r['launches_fwd_bwd']}  fp16 x65536 rel L2 eager/fused: {errs}")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
