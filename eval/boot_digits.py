"""BOOT on the digits benchmark: the one-step student (the embedded default) and a 4-step one, each scored against
the teacher's rows of the same benchmark, with no image read in training.

    python eval/boot_digits.py                       # -> eval/results/boot_digits.json (~25 min on 2 cores)
    python eval/boot_digits.py --steps 1 --max-steps 2000 --out /tmp/boot.json   # one arm, another budget

Each arm runs `recipes/boot.py` to a step count, not a time limit (`train.time_limit_minutes=null`), so a busy
machine changes its minutes and not its result. Goals: one-step FD at most 1.3x the teacher's default row, and the
4-step FD below the one-step FD.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
RESULTS = ROOT / "eval" / "results" / "boot_digits.json"
# Training steps per arm: what 2 CPU cores run in about 11 minutes (the embedded default's budget; a 4-step student's
# step costs 1.6x a one-step one's: it carries each sample to its segment's start).
BUDGET = {1: 2400, 4: 1500}


def run_arm(steps: int, max_steps: int | None, scratch: Path) -> dict:
    import boot

    from stepdistill.config import apply_overrides

    overrides = [f"model.steps={steps}", "train.time_limit_minutes=null", "train.overwrite=true",
                 f"train.output_dir={ROOT / 'outputs' / f'boot_digits_{steps}step'}",
                 f"eval.results={scratch / f'{steps}.json'}"]
    overrides.append(f"train.max_steps={max_steps or BUDGET.get(steps, 2400)}")
    boot.main(apply_overrides(boot.BOOTConfig(), overrides))
    return json.loads((scratch / f"{steps}.json").read_text())


def row(result: dict, model: str, nfe: int | None = None) -> dict:
    found = [r for r in result["rows"] if r["model"] == model and (nfe is None or r["nfe"] == nfe)]
    return found[0]


def main(argv: list[str] | None = None) -> None:
    from stepdistill.io import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 4], help="the students' sampling steps")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps (default: BUDGET's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        arms = {str(k): run_arm(k, args.max_steps, Path(scratch)) for k in args.steps}
    first = next(iter(arms.values()))
    teacher = row(first, "teacher", first["config"]["eval"]["teacher_nfe"])
    summary = {f"{k}_step_fd": row(r, "boot")["fd"] for k, r in arms.items()}
    summary["teacher_fd"] = teacher["fd"]
    goals = {}
    if "1" in arms:
        goals["one_step_fd_within_1.3x_teacher"] = summary["1_step_fd"] <= 1.3 * teacher["fd"]
    if "1" in arms and "4" in arms:
        goals["four_step_fd_below_one_step"] = summary["4_step_fd"] < summary["1_step_fd"]
    report = {"benchmark": "digits", "recipe": "boot", "command": "python eval/boot_digits.py",
              "images_read_in_training": 0, "summary": summary, "goals": goals, "arms": arms}
    atomic_write_text(args.out, json.dumps(report, indent=1) + "\n")
    print(json.dumps({"summary": summary, "goals": goals}, indent=1))


if __name__ == "__main__":
    main()
