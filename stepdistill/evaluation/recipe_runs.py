"""Each fake-score recipe's default run on a digits teacher, scored against that teacher's own default: can a
one-step student beat an imperfect teacher?

A teacher's rows (one DDIM step and its default, DPM-Solver++(2M) at 35 NFE) are measured in this process
(`teacher_rows`); each recipe runs as a user runs it, through `accelerate launch recipes/<recipe>.py` on the named
teacher with its own teacher rows skipped (`train`, its budget from `budget`), and its one-step row is kept with
its ratios to the teacher's default (`student_row`). The shipped teacher's block can come from the committed
results instead (`committed`: its table and each recipe's `eval/results/<recipe>_digits.json`). `markdown` is the
combined table, `goal` the question above on one block. The script that writes the committed table:
`experiments/digits_benchmark/imperfect_teacher.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ..digits_benchmark import TEACHER_TABLE

__all__ = ["RESULTS", "TEACHER_WANTED", "METRICS", "distribution_recipes", "teacher_rows", "train", "budget",
           "student_row", "committed", "goal", "markdown"]

RESULTS = TEACHER_TABLE.parent  # eval/results: the committed tables
TEACHER_WANTED = [("ddim", 1), ("dpmpp_2m", 35)]  # the last one is the teacher's default
METRICS = ("fd", "fd_std", "fd_per_seed", "fd2", "fd2_std", "fd2_per_seed", "precision", "recall", "accuracy",
           "seconds_per_image")


def _registry() -> dict:
    from .checkpoint import _registry as recipes  # recipes/registry.py, found beside this install

    return recipes()


def _recipes_dir() -> Path:
    from .checkpoint import RECIPES_DIR

    return RECIPES_DIR


def distribution_recipes() -> dict[str, str]:
    """The fake-score recipes of the registry (recipes/registry.py): name -> title, in table order."""
    return {name: info.title for name, info in _registry().items() if info.family == "distribution"}


def teacher_rows(teacher: str, seeds: Sequence[int]) -> list[dict]:
    """The teacher's one-step and default rows, measured in this process on the benchmark's protocol."""
    from ..digits_benchmark import DigitsBenchmark, teacher_sample_fn
    from ..roles import make_real_score
    from ..samplers import steps_for_nfe
    from ..teachers import load_teacher

    t = load_teacher(teacher)
    denoiser, bench = make_real_score(t), DigitsBenchmark()
    rows = []
    for sampler, nfe in TEACHER_WANTED:
        fn = teacher_sample_fn(denoiser, t.schedule, sampler=sampler, steps=steps_for_nfe(sampler, nfe))
        rows.append(dict(model="teacher", sampler=sampler, nfe=nfe, **bench.evaluate(fn, list(seeds))))
    rows[-1]["default"] = True
    return rows


def train(recipe: str, teacher: str, out: Path, seeds: Sequence[int], *, extra: tuple[str, ...] = ()) -> dict:
    """One default run through `accelerate launch` on `teacher`, its own teacher rows skipped (measured once,
    beside all runs); its digits results. `extra`: further overrides (e.g. the time limit off)."""
    results = out / "results.json"
    recipes = _recipes_dir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(recipes / f"{recipe}.py"),
           f"model.teacher={teacher}", f"train.output_dir={out}", "train.overwrite=true", "eval.teacher_rows=none",
           f"eval.seeds=[{','.join(map(str, seeds))}]", "export.enabled=false", *extra, f"eval.results={results}"]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=recipes.parent, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    data = json.loads(results.read_text())
    data["wall_minutes"] = round((time.time() - start) / 60, 2)
    return data


def budget(recipe: str, steps: str) -> tuple[str, ...]:
    """The overrides of a run's training budget: "limit" (the recipe's default, its horizon fitted to its time
    limit on this machine), "default" or "2x" (its default train.max_steps, or twice it, with no time limit)."""
    if steps == "limit":
        return ()
    config = _registry()[recipe].config_class()
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


def committed(teacher: str, results: Path = RESULTS) -> dict | None:
    """The shipped teacher's block from the committed results (its table and each recipe's default run)."""
    if teacher != "digits":
        return None
    table = json.loads((results / "teacher_digits.json").read_text())
    rows = [dict(next(r for r in table["rows"] if (r["sampler"], r["nfe"]) == want)) for want in TEACHER_WANTED]
    for r in rows:
        r.pop("default", None)
    rows[-1]["default"] = True
    block = dict(teacher_rows=rows, students={}, source="committed results")
    # precision / recall of the same committed runs, measured after them (their results predate the two)
    pr = {r["model"]: r for r in json.loads((results / "digits_precision_recall.json").read_text())["rows"]}
    for recipe in distribution_recipes():
        path = results / f"{recipe}_digits.json"
        if path.is_file():
            data = json.loads(path.read_text())
            later = pr.get(f"outputs/{recipe}_digits", {})
            data["rows"][0] = {**{k: later[k] for k in ("precision", "recall") if k in later}, **data["rows"][0]}
            block["students"][recipe] = student_row(recipe, data, rows[-1], f"eval/results/{recipe}_digits.json" + (
                ", precision / recall from eval/results/digits_precision_recall.json" if later else ""))
    return block


def goal(block: dict) -> dict | None:
    """The goal on the control teacher: DMD2's one-step mean FD below the teacher's default, recall at or above."""
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
    """The combined table of `result["teachers"]` (teacher -> block): each teacher's rows, then its students."""
    titles = distribution_recipes()
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
            lines.append(f"| {teacher} | {titles[recipe]} | {r['nfe']} | {_cell(r, 'fd')} | {r['fd_ratio']:.2f}x | "
                         f"{_cell(r, 'fd2')} | {ratio2} | {_cell(r, 'precision')} | {_cell(r, 'recall')} | "
                         f"{r['accuracy']:.3f} | {trained} |")
    return "\n".join(lines) + "\n"
