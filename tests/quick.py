"""The quick run every recipe test starts from: a tiny teacher, a few small steps, no time limit, no warm-up,
no benchmark; logs every step, samples never. Tests add what they pin (`quick.config("dmd2", teacher, out,
"train.max_steps=2")`); later overrides win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

OVERRIDES = ("train.batch_size=4", "train.log_every=1", "train.sample_every=1000", "train.time_limit_minutes=null",
             "optim.warmup_steps=0", "eval.enabled=false")


# What a quick run of a recipe needs on its tiny teacher beyond OVERRIDES (its defaults are sized for the shipped one)
SMALL = {
    "msd": ("model.students=2",),
    "tadsr": ("data.patches=32", "loss.regression_pairs=8", "loss.regression_nfe=4"),
    "yonos": ("data.patches=32",),
}


def overrides(teacher: str | Path, out: str | Path, *extra: str) -> list[str]:
    return [f"model.teacher={teacher}", f"train.output_dir={out}", *OVERRIDES, *extra]


def config(recipe: str, teacher: str | Path, out: str | Path, *extra: str) -> Any:
    """The recipe's config (`registry.RECIPES[recipe]`) under the quick overrides, its SMALL ones and `extra`."""
    from registry import RECIPES
    from stepdistill.config import apply_overrides

    return apply_overrides(RECIPES[recipe].config_class()(), overrides(teacher, out, *SMALL.get(recipe, ()), *extra))
