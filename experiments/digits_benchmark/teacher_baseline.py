"""Baseline of the shipped digits teacher: FD / KID / accuracy / speed per sampler and NFE.

    python experiments/digits_benchmark/teacher_baseline.py                      # ~15 CPU minutes; the files below
    python experiments/digits_benchmark/teacher_baseline.py --seeds 0 1 --quick  # a smoke run

Writes `eval/results/teacher_digits.json` (rows in the schema every recipe reports), a plot
`teacher_digits.png` (FD and accuracy against NFE, with the real-vs-real floor) and a sample grid
`teacher_digits_samples.png`. Protocol: `stepdistill.digits_benchmark`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from stepdistill.digits_benchmark import DigitsBenchmark, markdown_table, teacher_sample_fn
from stepdistill.io import atomic_write_text
from stepdistill.samplers import nfe_of, steps_for_nfe
from stepdistill.roles import make_real_score
from stepdistill.teachers import load_teacher

RESULTS = Path(__file__).resolve().parents[2] / "eval" / "results"
DEFAULT_NFE = 35  # EDM's 18-step Heun budget; every sampler is run at it and the best is the default
GRID = {"ddim": [1, 2, 4, 8, 16, 32, DEFAULT_NFE], "dpmpp_2m": [1, 2, 4, 8, 16, 32, DEFAULT_NFE],
        "heun": [7, 15, DEFAULT_NFE]}


def resolving_power(rows: list[dict], default: dict, nfe: int = 8, sampler: str | None = None) -> dict:
    """How far apart the default row and `sampler` (default: the default row's) at NFE `nfe` are, in
    standard deviations: unpaired (pooled seed-to-seed std) and paired (every row uses the same
    seeds, so the per-seed differences share their sampling noise: common random numbers)."""
    sampler = sampler or default["sampler"]
    few = next(r for r in rows if r["sampler"] == sampler and r["nfe"] == nfe)
    pooled = float(np.sqrt((few["fd_std"] ** 2 + default["fd_std"] ** 2) / 2))
    diffs = np.array(few["fd_per_seed"]) - np.array(default["fd_per_seed"])
    return dict(sampler=sampler, nfe=nfe, default_sampler=default["sampler"], default_nfe=default["nfe"],
                fd_difference=few["fd"] - default["fd"], pooled_std=pooled,
                separation_in_pooled_std=(few["fd"] - default["fd"]) / pooled,
                per_seed_differences=[round(float(d), 4) for d in diffs],
                paired_separation=float(diffs.mean() / diffs.std(ddof=1)))


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for sampler in sorted({r["sampler"] for r in result["rows"]}):
        rows = sorted((r for r in result["rows"] if r["sampler"] == sampler), key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in rows]
        ax_fd.errorbar(nfe, [r["fd"] for r in rows], yerr=[r["fd_std"] for r in rows], marker="o", capsize=3,
                       label=sampler)
        ax_acc.plot(nfe, [r["accuracy"] for r in rows], marker="o", label=sampler)
    ax_fd.axhline(result["floor_fd"], color="k", ls="--", label="real vs real (floor)")
    ax_acc.axhline(result["floor_accuracy"], color="k", ls="--", label="real held-out")
    for ax, name in ((ax_fd, "FD (classifier features), mean ± std over seeds"), (ax_acc, "class accuracy")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("NFE")
        ax.set_title(name)
        ax.legend()
    ax_fd.set_yscale("log")
    fig.suptitle(f"digits teacher, {result['n_samples']} class-balanced samples x {len(result['seeds'])} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def sample_grid(fns: dict, path: Path) -> None:
    """Rows: one per sampler setting; columns: classes 0..9 (two samples each)."""
    from torchvision.utils import save_image

    labels = torch.arange(10).repeat_interleave(2)
    images = torch.cat([fn(labels, torch.Generator().manual_seed(123)) for fn in fns.values()])
    images = torch.nn.functional.interpolate(images.clamp(-1, 1), scale_factor=3, mode="nearest")
    save_image(images * 0.5 + 0.5, path, nrow=len(labels), padding=2, pad_value=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--quick", action="store_true", help="NFE 1 and 8 with DDIM only (smoke test)")
    parser.add_argument("--demo", action="store_true", help="DDIM at 1 and 8 NFE, DPM-Solver++ at the default")
    parser.add_argument("--out", type=Path, default=RESULTS / "teacher_digits.json")
    args = parser.parse_args()

    torch.manual_seed(0)
    teacher = load_teacher(args.teacher)
    denoiser = make_real_score(teacher)
    bench = DigitsBenchmark()
    floor = bench.floor()
    grid = {"ddim": [1, 8]} if args.quick else {"ddim": [1, 8], "dpmpp_2m": [DEFAULT_NFE]} if args.demo else GRID
    rows = []
    for sampler, nfes in grid.items():
        for nfe in nfes:
            steps = steps_for_nfe(sampler, nfe)
            fn = teacher_sample_fn(denoiser, teacher.schedule, sampler=sampler, steps=steps)
            row = dict(model="teacher", sampler=sampler, nfe=nfe_of(sampler, steps), steps=steps, spacing="karras",
                       guidance=1.0, **bench.evaluate(fn, args.seeds))
            rows.append(row)
            print(f"{sampler:9s} NFE {row['nfe']:3d}: FD {row['fd']:7.3f} ± {row['fd_std']:.3f}  "
                  f"KID {row['kid']:.4f}  acc {row['accuracy']:.3f}  {1e3 * row['seconds_per_image']:.2f} ms/img",
                  flush=True)
    top = max(r["nfe"] for r in rows)
    default = min((r for r in rows if r["nfe"] == top), key=lambda r: r["fd"])
    default["default"] = True
    result = dict(
        benchmark="digits", command="python " + " ".join(sys.argv), teacher=args.teacher,
        n_samples=bench.n_samples, seeds=args.seeds, batch_size=bench.n_samples,
        floor_fd=floor["fd"], floor_kid=floor["kid"], floor_accuracy=floor["accuracy"],
        feature_dim=floor["feature_dim"], effective_dimension=floor["effective_dimension"],
        # The NFE sweep's baseline sampler (DDIM) and the default's own sampler, each at 8 NFE.
        resolving_power=[resolving_power(rows, default, sampler=s) for s in ("ddim", default["sampler"])]
        if grid is GRID else None,
        machine=dict(platform=platform.platform(), torch=torch.__version__, threads=torch.get_num_threads(),
                     device="cpu"),
        date=datetime.date.today().isoformat(), rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    fns = {f"{s}{n}": teacher_sample_fn(denoiser, teacher.schedule, sampler=s, steps=steps_for_nfe(s, n))
           for s, n in (("ddim", 1), ("ddim", 8), (default["sampler"], default["nfe"]))}
    sample_grid(fns, args.out.with_name(args.out.stem + "_samples.png"))
    print(f"floor FD {floor['fd']:.3f} (accuracy {floor['accuracy']:.3f}); default {default['sampler']} "
          f"NFE {default['nfe']}: FD {default['fd']:.3f} ± {default['fd_std']:.3f}")
    print("\n" + markdown_table(rows))
    if result["resolving_power"]:
        for rp in result["resolving_power"]:
            print(f"{rp['sampler']} at NFE 8 vs the default: {rp['separation_in_pooled_std']:.1f} pooled std apart, "
                  f"{rp['paired_separation']:.1f} std of the paired per-seed differences")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
