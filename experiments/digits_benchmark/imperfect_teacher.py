"""Every data-free and data-using recipe on each digits teacher, scored by one protocol: can a one-step student
beat an imperfect teacher?

    python experiments/digits_benchmark/imperfect_teacher.py                   # the control teacher (~60 CPU minutes)
    python experiments/digits_benchmark/imperfect_teacher.py --teachers digits digits-heldout   # both (~2 hours)
    python experiments/digits_benchmark/imperfect_teacher.py --only dmd2       # one recipe, merged into the file
    python experiments/digits_benchmark/imperfect_teacher.py --only dmd2 --steps 2x \
        --out experiments/tuning/results/imperfect/dmd2_2x.json

The shipped teacher (`digits`) already scores what i.i.d. draws of its own training set score, so a student can
only approach it; the control teacher (`digits-heldout`), trained on the 1,000 held-out digits only, is far from
its data, as teachers of real data are. For each teacher named in `--teachers`: its rows (one DDIM step and its
default, DPM-Solver++(2M) at 35 NFE) measured here, then each recipe's default run on it through `accelerate
launch`, as a user runs it (`model.teacher=<teacher>`; DMD2's GAN takes its real images from the teacher's own
training split, `stepdistill.data.training_split`). Everything is scored against the same reference split, on the
same seeds, in both feature spaces of the digits benchmark (FD and FD2). Teachers not re-run here keep the rows of
the committed results (the shipped teacher: `eval/results/<recipe>_digits.json`), marked as such.

Writes `eval/results/imperfect_teacher_digits.json` and the combined table `imperfect_teacher_digits.md`. The
runs, their rows and the table: `stepdistill.evaluation.recipe_runs`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

from stepdistill.evaluation.recipe_runs import (RESULTS, budget, committed, distribution_recipes, goal, markdown,
                                                student_row, teacher_rows, train)

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    recipes = distribution_recipes()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["digits-heldout"], help="teachers to (re-)run")
    parser.add_argument("--only", nargs="+", choices=sorted(recipes), help="these recipes only, merged into --out")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", choices=["limit", "default", "2x"], default="limit",
                        help="limit: each recipe's default, its horizon fitted to the 11.5-minute limit on this "
                             "machine; default / 2x: its default train.max_steps (or twice it) with no time limit, "
                             "so that a run's budget does not depend on the machine's speed")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "imperfect_teacher")
    parser.add_argument("--out", type=Path, default=RESULTS / "imperfect_teacher_digits.json")
    args = parser.parse_args(argv)
    from stepdistill.digits_benchmark import DigitsBenchmark
    from stepdistill.io import atomic_write_text
    from stepdistill.teachers import load_teacher

    for teacher in args.teachers:  # a missing teacher is one clear error before any run
        load_teacher(teacher)
    previous = json.loads(args.out.read_text()) if args.only and args.out.is_file() else {}
    floor = DigitsBenchmark().floor()
    result = dict(benchmark="digits", command="python " + " ".join(sys.argv), seeds=args.seeds, n_samples=1000,
                  steps=args.steps,
                  floor_fd=floor["fd"], floor_fd2=floor["fd2"], floor_recall=floor["recall"],
                  date=datetime.date.today().isoformat(), teachers=previous.get("teachers", {}))
    for teacher in args.teachers:
        rows = teacher_rows(teacher, args.seeds)
        block = dict(teacher_rows=rows, students=result["teachers"].get(teacher, {}).get("students", {}),
                     source="measured in this run")
        for recipe in args.only or recipes:
            data = train(recipe, teacher, args.work / teacher / recipe, args.seeds, extra=budget(recipe, args.steps))
            block["students"][recipe] = student_row(recipe, data, rows[-1], "trained in this run")
        block["students"] = {k: block["students"][k] for k in recipes if k in block["students"]}
        block["goal"] = goal(block) if teacher != "digits" else None
        result["teachers"][teacher] = block
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")  # each teacher as soon as it is done
    if "digits" not in result["teachers"]:
        result["teachers"] = {"digits": committed("digits"), **result["teachers"]}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    md = ("# Each recipe on each digits teacher\n\n`python experiments/digits_benchmark/imperfect_teacher.py`; FD and "
          f"FD2 over {len(args.seeds)} seeds x 1,000 class-balanced images against the reference split (floors "
          f"{floor['fd']:.3f} and {floor['fd2']:.3f}); ratios to each student's own teacher's default.\n\n"
          + markdown(result))
    atomic_write_text(args.out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
