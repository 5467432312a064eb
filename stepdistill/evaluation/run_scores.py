"""A digits run's checkpoints on the benchmark, each scored with the recipe's own protocol (its generator with the
EMA weights, as the run's final evaluation uses them: the same seeds give the same FD as the run's final row).

`training_curve`: FD over training, every checkpoint of a run (OUT.json and OUT.png). One FD at the end of a
run can land anywhere in an oscillation; the curve shows whether a setting descends steadily.

`precision_recall`: fidelity against coverage, FD beside improved precision and recall (Kynkaenniemi et al.
2019) for the real held-out split (the floor), i.i.d. draws of the teacher's training set, the teacher at its
default sampler (optionally at other CFG scales) and the newest checkpoint of each run (OUT.json). FD folds two
failures into one number: samples off the data (low precision) and parts of the data no sample reaches (low
recall); a mode-seeking one-step student and a teacher can share an FD and differ in which of the two they give up.

The scripts that write the committed curves and tables: `experiments/digits_benchmark/training_curve.py` and
`precision_recall.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..digits_benchmark import TEACHER_TABLE, DigitsBenchmark, default_row
from ..io import atomic_write_text

__all__ = ["student_of", "teacher_default_fd", "training_curve", "plot_curve", "guided", "precision_recall",
           "PR_KEYS"]

PR_KEYS = ("fd", "fd_std", "precision", "recall", "accuracy")


def student_of(checkpoint: Path):
    """The class-conditional student a training checkpoint holds (`stepdistill.student.Student`)."""
    from .generate import CheckpointModel

    model = CheckpointModel(checkpoint)
    if model.student is None:
        raise ValueError(f"{checkpoint}: the digits benchmark needs a class-conditional run")
    return model.student


def teacher_default_fd(path: Path) -> float | None:
    """The default row's FD of a teacher table (`eval/results/teacher_digits.json`), None without one."""
    if not path.is_file():
        return None
    row = default_row(json.loads(path.read_text())["rows"])
    return row["fd"] if row else None


def _checkpoints(run: Path) -> list[Path]:
    from ..checkpointing import checkpoint_dirs

    return checkpoint_dirs(run)


def training_curve(run: Path, out: Path, *, seeds: Sequence[int] = (0, 1, 2),
                   teacher_results: Path = TEACHER_TABLE) -> dict:
    """Every checkpoint of `run` (a recipe's train.output_dir) scored on `seeds`; writes OUT.json and OUT.png
    (FD mean ± std against the step, the teacher's default FD and the real-vs-real floor as lines)."""
    from ..checkpointing import checkpoint_step

    checkpoints = _checkpoints(run)
    if not checkpoints:
        raise ValueError(f"no complete checkpoint in {run / 'checkpoints'}: train with "
                         "train.keep_checkpoints=0 and a small train.checkpoint_every to keep them all")
    bench = DigitsBenchmark()
    rows = []
    for ckpt in checkpoints:
        step = checkpoint_step(ckpt)
        row = dict(step=step, **bench.evaluate(student_of(ckpt).sample_fn(), list(seeds)))
        rows.append(row)
        print(f"step {step:6d}  FD {row['fd']:.3f} ± {row['fd_std']:.3f}  precision {row['precision']:.3f}  "
              f"recall {row['recall']:.3f}  accuracy {row['accuracy']:.3f}", flush=True)
    result = dict(run=str(run), seeds=list(seeds), floor_fd=bench.floor()["fd"],
                  teacher_default_fd=teacher_default_fd(teacher_results), rows=rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    plot_curve(result, out.with_suffix(".png"))
    return result


def plot_curve(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in result["rows"]]
    fd = [r["fd"] for r in result["rows"]]
    std = [r["fd_std"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.errorbar(steps, fd, yerr=std, marker="o", capsize=3, label=Path(result["run"]).name)
    if result["teacher_default_fd"] is not None:
        ax.axhline(result["teacher_default_fd"], color="C1", ls="--", label="teacher (default sampler)")
    ax.axhline(result["floor_fd"], color="k", ls=":", label="real vs real (floor)")
    ax.set(xlabel="training step", ylabel="FD (digits)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def guided(denoiser, scale: float, conditioner):
    """The teacher at a CFG scale, called the way `teacher_sample_fn` calls a denoiser."""
    from ..guidance import CFGDenoiser

    cfg = CFGDenoiser(denoiser, scale)
    return lambda x, t, class_labels: cfg(x, t, uncond=conditioner.uncond(class_labels), class_labels=class_labels)


def precision_recall(runs: Sequence[Path], out: Path, *, nfe: int, seeds: Sequence[int] = (0, 1, 2),
                     guidance: Sequence[float] = (1.0,), teacher: str = "digits",
                     command: Optional[str] = None) -> dict:
    """The rows (module docstring): the floor, i.i.d. draws, the teacher's DPM-Solver++(2M) at `nfe` at each
    `guidance` scale, and the newest checkpoint of each of `runs`; writes OUT.json. A run without a complete
    checkpoint is refused before anything is scored."""
    import torch

    from ..checkpointing import checkpoint_step
    from ..conditioning import ClassConditioner
    from ..digits_benchmark import aggregate, teacher_sample_fn
    from ..roles import make_real_score
    from ..samplers import steps_for_nfe
    from ..teachers import load_teacher

    checkpoints = {run: _checkpoints(run) for run in runs}
    missing = [str(run) for run, c in checkpoints.items() if not c]
    if missing:  # before any scoring: a typo should not cost the teacher's minutes first
        raise ValueError(f"no complete checkpoint under {', '.join(missing)}")

    seeds = list(seeds)
    torch.manual_seed(0)
    bench = DigitsBenchmark()
    rows = [dict(model="real", set="heldout split (the floor)", **bench.floor()),
            dict(model="real", set="i.i.d. draws of the training set",
                 **aggregate([bench.resampled("all", s, replace=True) for s in seeds], [0.0]))]
    t = load_teacher(teacher)
    denoiser = make_real_score(t)
    conditioner = ClassConditioner.for_embeddings(t.net.config.num_class_embeds)
    steps = steps_for_nfe("dpmpp_2m", nfe)
    for scale in guidance:
        fn = teacher_sample_fn(guided(denoiser, scale, conditioner), t.schedule, sampler="dpmpp_2m", steps=steps)
        rows.append(dict(model="teacher", set=f"DPM-Solver++(2M), {steps} steps, guidance {scale:g}",
                         **bench.evaluate(fn, seeds)))
    for run, ckpts in checkpoints.items():
        rows.append(dict(model=str(run), set=f"step {checkpoint_step(ckpts[-1])}",
                         **bench.evaluate(student_of(ckpts[-1]).sample_fn(), seeds)))
    result = dict(command=command, seeds=seeds, neighbours=3,
                  rows=[{k: v for k, v in r.items() if k in ("model", "set", "fd_per_seed") + PR_KEYS} for r in rows])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    return result
