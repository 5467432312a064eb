"""`stepdistill.evaluation.recipe_runs` (`experiments/digits_benchmark/imperfect_teacher.py`): each recipe's default
run on a teacher, scored against that teacher's own default, with the shipped teacher's committed rows beside the
runs."""

import json
import subprocess
from pathlib import Path

import pytest

from stepdistill.evaluation import recipe_runs

TEACHER = dict(model="teacher", sampler="dpmpp_2m", nfe=35, fd=0.4, fd_std=0.03, fd2=2.0, fd2_std=0.1, precision=0.94,
               recall=0.72, accuracy=0.99, seconds_per_image=0.04, default=True)


def _student(**kw):
    row = dict(model="dmd2", sampler="one_step", nfe=1, fd=0.3, fd_std=0.01, fd2=2.5, fd2_std=0.2, precision=0.9,
               recall=0.75, accuracy=0.98, seconds_per_image=0.001)
    return dict(rows=[row | kw], train_steps=1200, train_minutes=11.4)


def test_a_run_is_the_recipe_default_on_the_teacher_scored_without_its_own_teacher_rows(tmp_path, monkeypatch):
    """The run is `accelerate launch recipes/<recipe>.py` on the named teacher, on the table's seeds, with the
    teacher rows skipped (they are measured once, beside all runs) and its results read back."""
    seen = []

    def run(cmd, check, cwd, env):
        seen.append(cmd)
        results = Path(next(a for a in cmd if a.startswith("eval.results=")).split("=", 1)[1])
        results.parent.mkdir(parents=True)
        results.write_text(json.dumps(_student()))

    monkeypatch.setattr(subprocess, "run", run)
    data = recipe_runs.train("dmd2", "digits-heldout", tmp_path / "dmd2", [0, 1, 2])
    cmd = seen[0]
    assert cmd[cmd.index("--num_processes") + 1] == "1" and cmd[cmd.index("--mixed_precision") + 1] == "no"
    assert cmd[-8].endswith("recipes/dmd2.py")
    assert cmd[-7:] == ["model.teacher=digits-heldout", f"train.output_dir={tmp_path / 'dmd2'}", "train.overwrite=true",
                        "eval.teacher_rows=none", "eval.seeds=[0,1,2]", "export.enabled=false",
                        f"eval.results={tmp_path / 'dmd2' / 'results.json'}"]
    assert data["rows"][0]["fd"] == 0.3


def test_student_rows_are_ratios_to_their_own_teachers_default_and_the_goal_reads_them():
    row = recipe_runs.student_row("dmd2", _student(), TEACHER, "trained in this run")
    assert row["fd_ratio"] == pytest.approx(0.75) and row["fd2_ratio"] == pytest.approx(1.25)
    assert row["recall_difference"] == pytest.approx(0.03) and row["train_steps"] == 1200
    block = dict(teacher_rows=[dict(TEACHER, sampler="ddim", nfe=1, default=False), TEACHER], students={"dmd2": row})
    assert recipe_runs.goal(block) == dict(fd_below_teacher=True, recall_at_or_above_teacher=True,
                                           fd2_below_teacher=False)
    worse = recipe_runs.student_row("dmd2", _student(fd=0.5, recall=0.7), TEACHER, "")
    assert recipe_runs.goal(dict(block, students={"dmd2": worse})) == dict(
        fd_below_teacher=False, recall_at_or_above_teacher=False, fd2_below_teacher=False)
    assert recipe_runs.goal(dict(block, students={})) is None


def test_the_combined_table_has_each_recipe_on_each_teacher():
    """The shipped teacher's block comes from the committed results (its table and each recipe's committed run,
    rows written before FD2 shown as missing); each row's ratio is to its own teacher."""
    shipped = recipe_runs.committed("digits")
    assert shipped["teacher_rows"][-1]["default"] and shipped["teacher_rows"][-1]["fd"] == pytest.approx(0.183, abs=1e-3)
    assert set(shipped["students"]) == set(recipe_runs.distribution_recipes())
    dmd2 = shipped["students"]["dmd2"]
    assert dmd2["fd_ratio"] == pytest.approx(dmd2["fd"] / shipped["teacher_rows"][-1]["fd"])
    control = dict(teacher_rows=[TEACHER], students={"dmd2": recipe_runs.student_row("dmd2", _student(), TEACHER, "")})
    lines = recipe_runs.markdown(dict(teachers={"digits": shipped, "digits-heldout": control})).splitlines()
    assert len(lines) == 2 + 2 + 4 + 1 + 1
    assert lines[-1].startswith("| digits-heldout | DMD2 | 1 | 0.300 ± 0.010 | 0.75x | 2.500 ± 0.200 | 1.25x | 0.900 | "
                                "0.750 | 0.980 | 1,200 (11.4) |")
    assert recipe_runs.committed("digits-heldout") is None


def test_the_step_budget_is_the_recipes_default_or_twice_it_without_a_time_limit():
    assert recipe_runs.budget("dmd2", "limit") == ()
    assert recipe_runs.budget("dmd2", "default") == ("train.max_steps=1600", "train.time_limit_minutes=null")
    assert recipe_runs.budget("sid", "2x")[0] == "train.max_steps=2300"
