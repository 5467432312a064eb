"""Fidelity against coverage on the digits benchmark: FD beside improved precision and recall
(Kynkaenniemi et al. 2019) for the teacher, real image sets and trained students.

    python experiments/digits_benchmark/precision_recall.py outputs/dmd2_digits outputs/sid_digits \
        --out eval/results/digits_precision_recall

FD folds two failures into one number: samples off the data (low precision) and parts of the data
no sample reaches (low recall). A mode-seeking one-step student and a teacher can share an FD and
differ in which of the two they give up. Rows: the real held-out split (the floor), i.i.d. draws of
the teacher's training set, the teacher at its default sampler (optionally at other CFG scales with
`--guidance`), and the newest checkpoint of every run folder given (scored as the run's own final
evaluation scores it). Writes OUT.json and prints a markdown table. The scoring:
`stepdistill.evaluation.run_scores`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stepdistill.evaluation.run_scores import precision_recall
from teacher_baseline import DEFAULT_NFE  # this folder is on the path of a script run

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, nargs="*", help="recipe output folders (their newest checkpoint is scored)")
    p.add_argument("--out", type=Path, required=True, help="OUT.json is written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="teacher CFG scales to score")
    p.add_argument("--teacher", default="digits")
    p.add_argument("--nfe", type=int, default=DEFAULT_NFE, help="the teacher's DPM-Solver++(2M) budget")
    args = p.parse_args(argv)
    command = "python " + " ".join([str(Path(__file__).resolve().relative_to(ROOT)), *sys.argv[1:]])
    try:
        result = precision_recall(args.runs, args.out, nfe=args.nfe, seeds=args.seeds, guidance=args.guidance,
                                  teacher=args.teacher, command=command)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print("\n| model | set | FD | precision | recall | accuracy |\n|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['model']} | {r['set']} | {r['fd']:.3f} ± {r.get('fd_std', 0):.3f} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['accuracy']:.3f} |")
    return result


if __name__ == "__main__":
    main()
