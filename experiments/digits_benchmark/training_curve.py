"""FD over training: score every checkpoint of a digits run on the benchmark.

    accelerate launch recipes/sid.py train.checkpoint_every=100 train.keep_checkpoints=0 \
        train.output_dir=outputs/sid_curve
    python experiments/digits_benchmark/training_curve.py outputs/sid_curve --out experiments/tuning/results/sid_curve

Each checkpoint's generator (with its EMA weights, as the run's final evaluation uses them) is scored
with the recipe's own protocol (the same seeds give the same FD as the run's final row). Writes
OUT.json and OUT.png (FD mean ± std over seeds against the step, the teacher's default FD and the
real-vs-real floor as lines). One FD at the end of a run can land anywhere in an oscillation; the
curve shows whether a setting descends steadily. The scoring: `stepdistill.evaluation.run_scores`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from stepdistill.digits_benchmark import TEACHER_TABLE
from stepdistill.evaluation.run_scores import training_curve


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a recipe's train.output_dir (its checkpoints/ and config.yaml)")
    p.add_argument("--out", type=Path, required=True, help="OUT.json and OUT.png are written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher-results", type=Path, default=TEACHER_TABLE)
    args = p.parse_args(argv)
    try:
        return training_curve(args.run, args.out, seeds=args.seeds, teacher_results=args.teacher_results)
    except ValueError as e:
        raise SystemExit(str(e)) from None


if __name__ == "__main__":
    main()
