"""The recipe interface, and the run every recipe shares: setup, the step loop, the end of training.

A recipe is a module (`recipes/<method>.py`) with

    NAME                                   the recipe's name (logs, results, model cards)
    setup(cfg) -> Run                      every network, optimiser and check; `run.setup` is a `Setup`
    step(run, draw, step) -> dict          one optimisation step, returning the values to log
    students(run) -> list[Student]         what training produced (`stepdistill.student`)

and a typed config extending `sections.RecipeConfig` (`train`, `data`, `eval`, `export`, `resume`) with its
`model`, `loss` and `optim` (`optim.lr_schedule` when its rates can decay). `run_recipe(recipe, cfg)` is everything
around the steps: restoring a checkpoint, the loop with logs, sample grids and checkpoints (which carry the
students' weights and student.json), the EMA weights at the end, the benchmark that applies
(`benchmarks.BENCHMARKS`) and the export. A protocol, not a base class: a recipe file holds only its method
(torchtune's `recipe_interfaces.py`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from .. import run_lock
from ..checkpointing import resolve_resume
from ..config import load_config, to_dict
from ..export.students import check_exportable
from ..student import AnyStudent
from ..roles import make_real_score
from .draw import Draw
from .final import finish, save_samples, validation_columns
from .footprint import footprint, format_footprint
from .loop import DivergenceError, train_loop
from .plan import DEFAULT_GPUS, format_plan, plan
from .resume import check_resume
from .setup import restore


class Recipe(Protocol):
    NAME: str

    def setup(self, cfg: Any) -> Any: ...

    def step(self, run: Any, draw: Draw, step: int) -> dict[str, float]: ...

    def students(self, run: Any) -> list[AnyStudent]: ...

    # Optional: `sync(run)`, called on every process before each checkpoint and at the end of training, brings
    # every process's copy of state that another process trains up to date (MSD's process-owned students).


def decays(optim: Any) -> bool:
    """Whether an optim section's learning rates decay over train.max_steps (`lr_schedule`)."""
    return getattr(optim, "lr_schedule", "constant") != "constant"


def writable(path: str | Path, key: str) -> Path:
    """`path`, after checking that its folder can be created and written (before any training)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{key}: cannot create {path.parent} ({e.strerror})") from None
    if path.is_dir():
        raise ValueError(f"{key}: {path} is a folder; name a file")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{key}: {path} is not writable")
    return path


def student_weights(students: list[AnyStudent]) -> dict:
    """The weights a checkpoint keeps for its students: one student's state dict, or each prefixed by name."""
    if len(students) == 1:
        return students[0].state_dict()
    return {f"{s.name}.{k}": v for s in students for k, v in s.state_dict().items()}


def check_student_steps(students: list[AnyStudent], steps) -> None:
    """`eval.student_steps`: step counts every student can sample, checked before training."""
    for k in steps:
        for s in students:
            for one in s.members:
                try:
                    one.sampler.times(k)
                except ValueError as e:
                    raise ValueError(f"eval.student_steps: {e}") from None


def run_recipe(recipe: Recipe, cfg: Any) -> dict | None:
    """Train `recipe` under `cfg` and finish: returns the benchmark result, if one was measured."""
    start_time = time.time()
    writable(Path(cfg.train.output_dir) / "config.yaml", "train.output_dir")
    evaluation = replace(cfg.eval, results=str(writable(cfg.eval.results or Path(cfg.train.output_dir) / "results.json",
                                                        "eval.results")))
    # Refused before any work: a resume that changes what defines the run (`resume.check_resume`).
    changed = check_resume(resolve_resume(cfg.resume, cfg.train.output_dir), cfg)
    try:
        return _train_and_finish(recipe, cfg, changed, evaluation, start_time)
    finally:
        run_lock.release(cfg.train.output_dir)


def _train_and_finish(recipe: Recipe, cfg: Any, changed: dict, evaluation, start_time: float) -> dict | None:
    run = recipe.setup(cfg)
    setup = run.setup
    sync = getattr(recipe, "sync", lambda run: None)
    setup.accelerator.print(format_footprint(footprint(run)))  # size a job before its first step
    check_student_steps(recipe.students(run), evaluation.student_steps)
    columns = validation_columns(cfg.train, recipe.students(run)[0].conditioner)
    if cfg.export.enabled:  # a student no export can express is refused before training, not after
        check_exportable(recipe.students(run))
    start_step = restore(setup.accelerator, setup.resume_from, output_dir=cfg.train.output_dir, config=cfg,
                         horizon=setup.horizon, changed=changed)
    steps_done = train_loop(
        setup.accelerator, cfg.train, name=recipe.NAME, start_step=start_step, start_time=start_time,
        step_fn=lambda draw, step: recipe.step(run, draw, step),
        save_samples=lambda path: save_samples(recipe.students(run)[0], path, write=setup.accelerator.is_main_process,
                                               columns=columns),
        student_weights=lambda: (sync(run), student_weights(recipe.students(run)))[1],
        student_record=lambda: recipe.students(run)[0].record(),
        config=to_dict(cfg), decaying=decays(getattr(cfg, "optim", None)), horizon=setup.horizon)
    sync(run)
    students = [s.use_ema() for s in recipe.students(run)]
    return finish(students, setup.accelerator, output_dir=cfg.train.output_dir, evaluation=evaluation,
                  export=cfg.export, real_denoiser=make_real_score(setup.teacher), schedule=setup.schedule,
                  steps_done=steps_done, horizon=setup.horizon, train_minutes=(time.time() - start_time) / 60,
                  config=to_dict(cfg))


def cli(recipe: Recipe, config_cls: type, argv: list[str] | None = None) -> dict | None:
    """A recipe's command line: the config from `--config PRESET.yaml` and dotted overrides, then the run.
    Bad input (a config mistake, a missing teacher, a refused folder) prints one line, `error: ...`, and
    exits with status 2; a diverged run exits with status 1. `--debug` keeps the traceback instead.
    `--plan [--gpus N]` prints the per-GPU memory plan of the run (`plan.plan`: from the teacher's configs, on the
    meta device) and returns before any setup: no teacher is loaded, nothing is placed on a device."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    planning = "--plan" in argv
    argv = [a for a in argv if a != "--plan"]
    try:
        gpus = []  # --gpus N[,M...] or --gpus=N: counts to plan for besides DEFAULT_GPUS
        while any(a == "--gpus" or a.startswith("--gpus=") for a in argv):
            i = next(i for i, a in enumerate(argv) if a == "--gpus" or a.startswith("--gpus="))
            value = argv[i].split("=", 1)[1] if "=" in argv[i] else (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i:i + (1 if "=" in argv[i] else 2)]
            if not planning or not all(v.strip().isdigit() and int(v) > 0 for v in value.split(",")):
                raise ValueError(f"--gpus {value!r}: GPU counts for --plan, e.g. --plan --gpus 8 or --gpus 8,16")
            gpus += [int(v) for v in value.split(",")]
        if planning:
            cfg = load_config(config_cls, argv)
            world = int(os.environ.get("WORLD_SIZE", "1") or 1)  # a launch of several processes plans for them too
            if os.environ.get("RANK", "0") == "0":  # one plan per launch
                print(format_plan(plan(recipe, cfg, sorted({*DEFAULT_GPUS, *gpus, world}))), flush=True)
            return None
        return run_recipe(recipe, load_config(config_cls, argv))
    except DivergenceError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:  # ConfigError, TeacherLoadError, bad paths and values
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
