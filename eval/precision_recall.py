"""Fidelity against coverage on the digits benchmark: FD beside improved precision and recall
(Kynkaenniemi et al. 2019) for the teacher, real image sets and trained students.

    python eval/precision_recall.py outputs/dmd2_digits outputs/sid_digits --out eval/results/digits_precision_recall

FD folds two failures into one number: samples off the data (low precision) and parts of the data
no sample reaches (low recall). A mode-seeking one-step student and a teacher can share an FD and
differ in which of the two they give up. Rows: the real held-out split (the floor), i.i.d. draws of
the teacher's training set, the teacher at its default sampler (optionally at other CFG scales with
`--guidance`), and the newest checkpoint of every run folder given (scored as the run's own final
evaluation scores it). Writes OUT.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "eval"))

from stepdistill.digits_benchmark import DigitsBenchmark, aggregate, teacher_sample_fn  # noqa: E402
from stepdistill.checkpointing import checkpoint_dirs, checkpoint_step  # noqa: E402
from stepdistill.conditioning import ClassConditioner  # noqa: E402
from stepdistill.guidance import CFGDenoiser  # noqa: E402
from stepdistill.io import atomic_write_text  # noqa: E402
from stepdistill.samplers import steps_for_nfe  # noqa: E402
from stepdistill.roles import make_real_score  # noqa: E402
from stepdistill.teachers import load_teacher  # noqa: E402
from teacher_baseline import DEFAULT_NFE  # noqa: E402
from training_curve import student_of  # noqa: E402

KEYS = ("fd", "fd_std", "precision", "recall", "accuracy")


def guided(denoiser, scale: float, conditioner: ClassConditioner):
    """The teacher at a CFG scale, called the way `teacher_sample_fn` calls a denoiser."""
    cfg = CFGDenoiser(denoiser, scale)
    return lambda x, t, class_labels: cfg(x, t, uncond=conditioner.uncond(class_labels), class_labels=class_labels)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="*", help="recipe output folders (their newest checkpoint is scored)")
    p.add_argument("--out", type=Path, required=True, help="OUT.json is written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="teacher CFG scales to score")
    p.add_argument("--teacher", default="digits")
    p.add_argument("--nfe", type=int, default=DEFAULT_NFE, help="the teacher's DPM-Solver++(2M) budget")
    args = p.parse_args(argv)
    checkpoints = {run: checkpoint_dirs(run) for run in args.runs}
    missing = [str(run) for run, c in checkpoints.items() if not c]
    if missing:  # before any scoring: a typo should not cost the teacher's minutes first
        raise SystemExit(f"no complete checkpoint under {', '.join(missing)}")

    torch.manual_seed(0)
    bench = DigitsBenchmark()
    rows = [dict(model="real", set="heldout split (the floor)", **bench.floor()),
            dict(model="real", set="i.i.d. draws of the training set",
                 **aggregate([bench.resampled("all", s, replace=True) for s in args.seeds], [0.0]))]
    teacher = load_teacher(args.teacher)
    denoiser = make_real_score(teacher)
    conditioner = ClassConditioner.for_embeddings(teacher.net.config.num_class_embeds)
    steps = steps_for_nfe("dpmpp_2m", args.nfe)
    for scale in args.guidance:
        fn = teacher_sample_fn(guided(denoiser, scale, conditioner), teacher.schedule, sampler="dpmpp_2m", steps=steps)
        rows.append(dict(model="teacher", set=f"DPM-Solver++(2M), {steps} steps, guidance {scale:g}",
                         **bench.evaluate(fn, args.seeds)))
    for run, ckpts in checkpoints.items():
        rows.append(dict(model=str(run), set=f"step {checkpoint_step(ckpts[-1])}",
                         **bench.evaluate(student_of(ckpts[-1]).sample_fn(), args.seeds)))

    print("\n| model | set | FD | precision | recall | accuracy |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['set']} | {r['fd']:.3f} ± {r.get('fd_std', 0):.3f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['accuracy']:.3f} |")
    result = dict(command="python " + " ".join([str(Path(__file__).relative_to(ROOT))] + sys.argv[1:]),
                  seeds=args.seeds, neighbours=3, rows=[{k: v for k, v in r.items()
                                                       if k in ("model", "set", "fd_per_seed") + KEYS} for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
