"""FD over training: score every checkpoint of a digits run on the benchmark.

    accelerate launch recipes/sid.py train.checkpoint_every=100 train.keep_checkpoints=0 \
        train.output_dir=outputs/sid_curve
    python eval/training_curve.py outputs/sid_curve --out docs/tuning/results/sid_curve

Each checkpoint's generator (with its EMA weights, as the run's final evaluation uses them) is scored
with the recipe's own protocol (the same seeds give the same FD as the run's final row). Writes
OUT.json and OUT.png (FD mean ± std over seeds against the step, the teacher's default FD and the
real-vs-real floor as lines). One FD at the end of a run can land anywhere in an oscillation; the
curve shows whether a setting descends steadily.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stepdistill.digits_benchmark import DigitsBenchmark, default_row  # noqa: E402
from stepdistill.checkpointing import checkpoint_dirs, checkpoint_step  # noqa: E402
from stepdistill.evaluation.generate import CheckpointModel  # noqa: E402
from stepdistill.io import atomic_write_text  # noqa: E402
from stepdistill.student import Student  # noqa: E402


def student_of(checkpoint: Path) -> Student:
    model = CheckpointModel(checkpoint)
    if model.student is None:
        raise ValueError(f"{checkpoint}: the digits benchmark needs a class-conditional run")
    return model.student


def teacher_default_fd(path: Path) -> float | None:
    if not path.is_file():
        return None
    row = default_row(json.loads(path.read_text())["rows"])
    return row["fd"] if row else None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a recipe's train.output_dir (its checkpoints/ and config.yaml)")
    p.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.png are written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-results", type=Path, default=ROOT / "eval" / "results" / "teacher_digits.json")
    args = p.parse_args(argv)
    checkpoints = checkpoint_dirs(args.run)
    if not checkpoints:
        raise SystemExit(f"no complete checkpoint in {args.run / 'checkpoints'}: train with "
                         "train.keep_checkpoints=0 and a small train.checkpoint_every to keep them all")

    bench = DigitsBenchmark()
    rows = []
    for ckpt in checkpoints:
        step = checkpoint_step(ckpt)
        row = dict(step=step, **bench.evaluate(student_of(ckpt).sample_fn(), args.seeds))
        rows.append(row)
        print(f"step {step:6d}  FD {row['fd']:.3f} ± {row['fd_std']:.3f}  precision {row['precision']:.3f}  "
              f"recall {row['recall']:.3f}  accuracy {row['accuracy']:.3f}", flush=True)
    result = dict(run=str(args.run), seeds=args.seeds, floor_fd=bench.floor()["fd"],
                  teacher_default_fd=teacher_default_fd(args.teacher_results), rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    return result


def plot(result: dict, path: Path) -> None:
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


if __name__ == "__main__":
    main()
