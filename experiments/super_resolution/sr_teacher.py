"""The shipped super-resolution teachers on the held-out natural-image patches: bicubic, then each teacher through
DPM-Solver++(2M) at a grid of NFEs (and DDIM at one step), every row measured in this invocation.

    python experiments/super_resolution/sr_teacher.py    # -> eval/results/sr_teacher.json (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["sr", "sr-x2"])
    parser.add_argument("--nfe", type=int, nargs="+", default=[2, 4, 8, 15, 35])
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "sr_teacher.json")
    args = parser.parse_args(argv)
    from stepdistill.degradations import Degradation
    from stepdistill.teachers import load_teacher
    from stepdistill.sr_benchmark import (NUM_TEST_PATCHES, SRBenchmark, bicubic_fn, format_row, patches_conditioner,
                                          teacher_fn)

    result = {"benchmark": "sr_patches", "command": "python experiments/super_resolution/sr_teacher.py",
              "n_patches": NUM_TEST_PATCHES,
              "torch_threads": torch.get_num_threads(), "teachers": {}}
    for name in args.teachers:
        teacher = load_teacher(name)
        scale = int(teacher.index["sr_scale"])
        shape = (3, teacher.net.config.sample_size, teacher.net.config.sample_size)
        conditioner = patches_conditioner(shape[-1], Degradation(scale), num_patches=NUM_TEST_PATCHES)
        bench, den = SRBenchmark(conditioner), teacher.denoiser()
        rows = [bench.evaluate(bicubic_fn(conditioner), model="bicubic", nfe=0)[0]]
        for sampler, nfe in [("ddim", 1)] + [("dpmpp_2m", n) for n in args.nfe]:
            fn = teacher_fn(den, teacher.schedule, conditioner, sampler=sampler, nfe=nfe, shape=shape)
            rows.append(bench.evaluate(fn, model=name, sampler=sampler, nfe=nfe)[0])
            r = rows[-1]
            print(f"x{scale} {sampler:>8} " + format_row(r, width=6), flush=True)
        result["teachers"][name] = {"scale": scale, "crop_border": scale, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
