"""Every data-free and data-using recipe on each digits teacher, scored by one protocol: can a one-step student
beat an imperfect teacher?

    python eval/imperfect_teacher.py                                # the control teacher (~60 CPU minutes)
    python eval/imperfect_teacher.py --teachers digits digits-heldout   # both teachers, every run (~2 hours)
    python eval/imperfect_teacher.py --only dmd2                    # one recipe, merged into the existing file
    python eval/imperfect_teacher.py --only dmd2 --steps 2x --out docs/tuning/results/imperfect/dmd2_2x.json

The shipped teacher (`digits`) already scores what i.i.d. draws of its own training set score, so a student can
only approach it; the control teacher (`digits-heldout`), trained on the 1,000 held-out digits only, is far from
its data, as teachers of real data are. For each teacher named in `--teachers`: its rows (one DDIM step and its
default, DPM-Solver++(2M) at 35 NFE) measured here, then each recipe's default run on it through `accelerate
launch`, as a user runs it (`model.teacher=<teacher>`; DMD2's GAN takes its real images from the teacher's own
training split, `stepdistill.data.training_split`). Everything is scored against the same reference split, on the
same seeds, in both feature spaces of the digits benchmark (FD and FD2). Teachers not re-run here keep the rows of
the committed results (the shipped teacher: `eval/results/<recipe>_digits.json`), marked as such.

Writes `eval/results/imperfect_teacher_digits.json` and the combined table `imperfect_teacher_digits.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))  # the recipes are scripts: recipes/registry.py lists them
from registry import RECIPES as REGISTRY  # noqa: E402
RESULTS = ROOT / "eval" / "results"
# The fake-score recipes of the registry (recipes/registry.py): name -> label, in table order
RECIPES = {name: info.title for name, info in REGISTRY.items() if info.family == "distribution"}
TEACHER_WANTED = [("ddim", 1), ("dpmpp_2m", 35)]  # the last one is the teacher's default
METRICS = ("fd", "fd_std", "fd_per_seed", "fd2", "fd2_std", "fd2_per_seed", "precision", "recall", "accuracy",
           "seconds_per_image")


def teacher_rows(teacher: str, seeds: list[int]) -> list[dict]:
    """The teacher's one-step and default rows, measured in this process on the benchmark's protocol."""
    from stepdistill.digits_benchmark import DigitsBenchmark, teacher_sample_fn
    from stepdistill.roles import make_real_score
    from stepdistill.teachers import load_teacher
    from stepdistill.samplers import steps_for_nfe

    t = load_teacher(teacher)
    denoiser, bench = make_real_score(t), DigitsBenchmark()
    rows = []
    for sampler, nfe in TEACHER_WANTED:
        fn = teacher_sample_fn(denoiser, t.schedule, sampler=sampler, steps=steps_for_nfe(sampler, nfe))
        rows.append(dict(model="teacher", sampler=sampler, nfe=nfe, **bench.evaluate(fn, seeds)))
    rows[-1]["default"] = True
    return rows


def train(recipe: str, teacher: str, out: Path, seeds: list[int], *, extra: tuple[str, ...] = ()) -> dict:
    """One default run through `accelerate launch` on `teacher`, its own teacher rows skipped (measured once
    above); its digits results. `extra`: further overrides (e.g. the time limit off)."""
    results = out / "results.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / f"{recipe}.py"),
           f"model.teacher={teacher}", f"train.output_dir={out}", "train.overwrite=true", "eval.teacher_rows=none",
           f"eval.seeds=[{','.join(map(str, seeds))}]", "export.enabled=false", *extra, f"eval.results={results}"]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    data = json.loads(results.read_text())
    data["wall_minutes"] = round((time.time() - start) / 60, 2)
    return data


def budget(recipe: str, steps: str) -> tuple[str, ...]:
    """The overrides of a run's training budget (`--steps`)."""
    if steps == "limit":
        return ()
    config = REGISTRY[recipe].config_class()
    max_steps = config().train.max_steps * (2 if steps == "2x" else 1)
    return (f"train.max_steps={max_steps}", "train.time_limit_minutes=null")


def student_row(recipe: str, data: dict, teacher_default: dict, source: str) -> dict:
    """A recipe's one-step row with its ratios to its own teacher's default."""
    r = data["rows"][0]
    row = dict(recipe=recipe, nfe=r["nfe"], **{k: r[k] for k in METRICS if k in r},
               train_steps=data.get("train_steps"), train_minutes=data.get("train_minutes"), source=source)
    row["fd_ratio"] = r["fd"] / teacher_default["fd"]
    if "fd2" in r and "fd2" in teacher_default:
        row["fd2_ratio"] = r["fd2"] / teacher_default["fd2"]
    if "recall" in r:
        row["recall_difference"] = r["recall"] - teacher_default["recall"]
    return row


def committed(teacher: str) -> dict | None:
    """The shipped teacher's block from the committed results (its table and each recipe's default run)."""
    if teacher != "digits":
        return None
    table = json.loads((RESULTS / "teacher_digits.json").read_text())
    rows = [dict(next(r for r in table["rows"] if (r["sampler"], r["nfe"]) == want)) for want in TEACHER_WANTED]
    for r in rows:
        r.pop("default", None)
    rows[-1]["default"] = True
    block = dict(teacher_rows=rows, students={}, source="committed results")
    # precision / recall of the same committed runs, measured after them (their results predate the two)
    pr = {r["model"]: r for r in json.loads((RESULTS / "digits_precision_recall.json").read_text())["rows"]}
    for recipe in RECIPES:
        path = RESULTS / f"{recipe}_digits.json"
        if path.is_file():
            data = json.loads(path.read_text())
            later = pr.get(f"outputs/{recipe}_digits", {})
            data["rows"][0] = {**{k: later[k] for k in ("precision", "recall") if k in later}, **data["rows"][0]}
            block["students"][recipe] = student_row(recipe, data, rows[-1], f"eval/results/{recipe}_digits.json" + (
                ", precision / recall from eval/results/digits_precision_recall.json" if later else ""))
    return block


def goal(block: dict) -> dict | None:
    """Issue goal on the control teacher: DMD2's one-step mean FD below the teacher's default, recall at or above."""
    dmd2 = block["students"].get("dmd2")
    if dmd2 is None:
        return None
    teacher = block["teacher_rows"][-1]
    return dict(fd_below_teacher=dmd2["fd"] < teacher["fd"], recall_at_or_above_teacher=dmd2["recall"] >= teacher["recall"],
                fd2_below_teacher=("fd2" in dmd2 and "fd2" in teacher and dmd2["fd2"] < teacher["fd2"]))


def _cell(row: dict, key: str) -> str:
    if key not in row:
        return "—"
    return f"{row[key]:.3f} ± {row[key + '_std']:.3f}" if key + "_std" in row else f"{row[key]:.3f}"


def markdown(result: dict) -> str:
    lines = ["| teacher | model | NFE | FD | FD / its teacher | FD2 | FD2 / its teacher | precision | recall | "
             "accuracy | training steps (minutes) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for teacher, block in result["teachers"].items():
        for r in block["teacher_rows"]:
            lines.append(f"| {teacher} | teacher, {r['sampler']}{' (default)' if r.get('default') else ''} | "
                         f"{r['nfe']} | {_cell(r, 'fd')} | | {_cell(r, 'fd2')} | | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {r['accuracy']:.3f} | |")
        for recipe, r in block["students"].items():
            ratio2 = f"{r['fd2_ratio']:.2f}x" if "fd2_ratio" in r else "—"
            trained = f"{r['train_steps']:,} ({r['train_minutes']:.1f})" if r.get("train_steps") else ""
            lines.append(f"| {teacher} | {RECIPES[recipe]} | {r['nfe']} | {_cell(r, 'fd')} | {r['fd_ratio']:.2f}x | "
                         f"{_cell(r, 'fd2')} | {ratio2} | {_cell(r, 'precision')} | {_cell(r, 'recall')} | "
                         f"{r['accuracy']:.3f} | {trained} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", nargs="+", default=["digits-heldout"], help="teachers to (re-)run")
    parser.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="these recipes only, merged into --out")
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
        for recipe in args.only or RECIPES:
            data = train(recipe, teacher, args.work / teacher / recipe, args.seeds, extra=budget(recipe, args.steps))
            block["students"][recipe] = student_row(recipe, data, rows[-1], "trained in this run")
        block["students"] = {k: block["students"][k] for k in RECIPES if k in block["students"]}
        block["goal"] = goal(block) if teacher != "digits" else None
        result["teachers"][teacher] = block
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")  # each teacher as soon as it is done
    if "digits" not in result["teachers"]:
        result["teachers"] = {"digits": committed("digits"), **result["teachers"]}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    md = ("# Each recipe on each digits teacher\n\n`python eval/imperfect_teacher.py`; FD and FD2 over "
          f"{len(args.seeds)} seeds x 1,000 class-balanced images against the reference split (floors "
          f"{floor['fd']:.3f} and {floor['fd2']:.3f}); ratios to each student's own teacher's default.\n\n"
          + markdown(result))
    atomic_write_text(args.out.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
