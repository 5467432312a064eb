"""Super-resolution on the held-out natural-image patches, every row measured in one invocation: bicubic, the
shipped x4 teacher at its default steps and at one step, a regression-only student (TAD-SR without HSD and GAN:
the ablation), TAD-SR and YONOS-SR at one step. The students are trained first (their default runs, through
`accelerate launch` as a user runs them), then loaded from their exported pipelines' weights and measured here
with the teacher rows, on the same patches, noise and machine.

    python experiments/super_resolution/sr_patches.py           # -> eval/results/sr_patches.{json,csv,png} (~30 min)
    python experiments/super_resolution/sr_patches.py --reuse   # measure the runs already in --work
    python experiments/super_resolution/sr_patches.py --steps 2x --work outputs/sr_patches_2x --out F   # 2x budgets
    python experiments/super_resolution/sr_patches.py --only TAD-SR ...  # some students (first word of the row name)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
RUNS = {  # row name -> (recipe, overrides)
    "regression only (TAD-SR without HSD and GAN)": ("tadsr", ["loss.hsd_weight=0", "loss.gan_weight=0"]),
    "TAD-SR": ("tadsr", []),
    "YONOS-SR (x2 teacher -> x4)": ("yonos", []),
}
TEACHER_SAMPLER, TEACHER_NFE = "dpmpp_2m", 15  # TAD-SR's teacher: 15 steps


def train(recipe: str, overrides: list[str], out: Path, budget: float) -> dict:
    """One default run (its time limit times `budget`), exported; its record."""
    from importlib import import_module

    sys.path.insert(0, str(ROOT / "recipes"))
    cfg = import_module(recipe).__dict__[{"tadsr": "TADSRConfig", "yonos": "YONOSConfig"}[recipe]]()
    extra = [] if budget == 1 else [f"train.max_steps={int(cfg.train.max_steps * budget)}",
                                    f"train.time_limit_minutes={cfg.train.time_limit_minutes * budget}"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / f"{recipe}.py"), *overrides,
           *extra, f"train.output_dir={out}", "train.overwrite=true", "eval.enabled=false"]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return {"command": " ".join(["accelerate launch", f"recipes/{recipe}.py", *overrides, *extra]),
            "wall_minutes": round((time.time() - start) / 60, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "sr_patches_eval")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "sr_patches.json")
    parser.add_argument("--reuse", action="store_true", help="measure the runs already in --work")
    parser.add_argument("--steps", choices=["1x", "2x"], default="1x", help="each run's budget")
    parser.add_argument("--only", nargs="+", choices=[k.split(" ")[0] for k in RUNS],
                        help="train and measure these students only (first word of the row name)")
    args = parser.parse_args(argv)
    from stepdistill.degradations import Degradation
    from stepdistill.teachers import load_teacher
    from stepdistill.sr_benchmark import (
        NUM_TEST_PATCHES,
        SRBenchmark,
        METRICS,
        bicubic_fn,
        format_row,
        patches_conditioner,
        pipeline_fn,
        teacher_fn,
        write_sr_results,
    )

    budget = 2.0 if args.steps == "2x" else 1.0
    runs = {}
    for i, (name, (recipe, overrides)) in enumerate(RUNS.items()):
        if args.only and name.split(" ")[0] not in args.only:
            continue
        out = args.work / f"{recipe}_{i}"
        runs[name] = ({"command": "(reused)"} if args.reuse else train(recipe, overrides, out, budget)), out
    teacher = load_teacher("sr")
    shape = (3, teacher.net.config.sample_size, teacher.net.config.sample_size)
    conditioner = patches_conditioner(shape[-1], Degradation(teacher.index["sr_scale"]), num_patches=NUM_TEST_PATCHES)
    bench, den = SRBenchmark(conditioner), teacher.denoiser()
    rows, images = [], {}
    row, images["bicubic"] = bench.evaluate(bicubic_fn(conditioner), model="bicubic", nfe=0)
    rows.append(row)
    for nfe, sampler in ((TEACHER_NFE, TEACHER_SAMPLER), (1, "ddim")):
        fn = teacher_fn(den, teacher.schedule, conditioner, sampler=sampler, nfe=nfe, shape=shape)
        row, images[f"teacher {nfe} NFE"] = bench.evaluate(fn, model="teacher", sampler=sampler, nfe=nfe)
        rows.append(row)
    for name, (record, out) in runs.items():  # the exported pipelines, run as a user runs them
        fn, config = pipeline_fn(out / "pipeline", conditioner)
        row, images[name.split(" (")[0]] = bench.evaluate(fn, model=name, nfe=len(config["timesteps"]))
        rows.append({**row, **record})
    images["HR"] = bench.ground_truth
    teacher_row = rows[1]
    for r in rows:
        r["psnr_vs_teacher_db"] = round(r["psnr_y"] - teacher_row["psnr_y"], 3)
        r["hf_error_vs_teacher"] = round(r["hf_spectrum_error"] / teacher_row["hf_spectrum_error"], 3)
        r["speedup_vs_teacher"] = round(teacher_row["seconds_per_image"] / r["seconds_per_image"], 1)
    result = {"benchmark": "sr_patches",
              "command": " ".join(["python experiments/super_resolution/sr_patches.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "scale": bench.scale, "n_patches": NUM_TEST_PATCHES, "patch_size": shape[-1], "crop_border": bench.scale,
              "metrics": METRICS + "; seconds per image at batch 64",
              "teacher_default": f"{TEACHER_SAMPLER}, {TEACHER_NFE} NFE", "torch_threads": torch.get_num_threads(),
              "rows": rows}
    write_sr_results(result, args.out, images, conditioner=conditioner)
    for r in rows:
        print(format_row(r, width=44))
    return 0


if __name__ == "__main__":
    sys.exit(main())
