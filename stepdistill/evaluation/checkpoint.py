"""A training checkpoint's student, as its recipe builds it: for evaluating `OUTPUT/checkpoints/step_XXXXXXXX/`.

A checkpoint holds `step.json`, `student.safetensors` (the student's weights as the run evaluates and exports
them, EMA applied: `Student.state_dict`; a checkpoint without it falls back to the raw generator in accelerate's
`model.safetensors`) and the config it was written under (`config.yaml` beside `step.json`, else the run's
`OUTPUT/config.yaml`, whose `resumes` record is not a setting). The recipe (`recipes/registry.py`) is the one
`step.json` names; for a checkpoint older than that record, the one whose config takes every key of that file
and leaves fewest of its own unset. A file without one of its top-level keys is refused as truncated. Its student is what the recipe's own `setup(cfg)` and
`students(run)` give (the consistency function around the network, the timesteps, the default steps and
sampler, the routing of several students), built in a scratch output folder so that the run's own folder is
never touched (teacher outputs the run cached are linked in, not recomputed), with the checkpoint's weights
loaded into it: nothing of a recipe is re-implemented here.

`gen` measures class-conditional (or unconditional) pixel students; a text-to-image or super-resolution
checkpoint is refused with the command that measures its export.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..io import check_safetensors, first_line
from .inputs import read_json, read_yaml

__all__ = ["CheckpointRun", "read_checkpoint", "refuse_unsupported", "build_student", "RECORD_KEYS"]

RECORD_KEYS = ("resumes",)  # a run's config.yaml: records beside the settings (the resume history)
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


@dataclasses.dataclass
class CheckpointRun:
    checkpoint: Path
    run_dir: Path  # OUTPUT
    config_path: Path
    recipe: str  # `registry.RECIPES` key
    cfg: Any  # the recipe's typed config
    weights: Path  # student.safetensors, or model.safetensors
    ema: bool  # the weights are `student.safetensors` (EMA applied where the run kept one)
    step: int

    @property
    def export(self) -> Path:
        return self.run_dir / "pipeline"

    @property
    def super_resolution(self) -> bool:
        return _registry()[self.recipe].family == "super_resolution"


def _registry():
    try:
        from registry import RECIPES  # recipes/ on sys.path (pytest, eval/ tools)
    except ImportError:
        if not (RECIPES_DIR / "registry.py").is_file():
            raise ValueError(f"the recipes ({RECIPES_DIR}) are not beside this stepdistill install, so a "
                             "checkpoint's student cannot be rebuilt; evaluate the run's exported pipeline "
                             "(OUTPUT/pipeline)") from None
        sys.path.insert(0, str(RECIPES_DIR))
        from registry import RECIPES
    return RECIPES


def _keys(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        out.add(prefix + str(k))
        if isinstance(v, dict):
            out |= _keys(v, f"{prefix}{k}.")
    return out


def _which_recipe(data: dict, config_path: Path) -> tuple[str, Any]:
    """The recipe whose config takes every key of `data` and leaves the fewest of its own unset (a run's
    config.yaml has them all: exactly one recipe's), with the typed config. A config without one of the recipe's
    sections (a file cut short that still parses) is refused: its defaults would stand in for the run's values."""
    from ..config import from_dict, to_dict

    given, fits, misfits = _keys(data), [], []
    for name, info in _registry().items():
        cls = info.config_class()
        defaults = to_dict(cls())
        own = _keys(defaults)
        try:
            if not given <= own:
                raise ValueError(f"unknown keys {sorted(given - own)[:3]}")
            cfg = from_dict(cls, data)
        except (ValueError, TypeError) as e:
            misfits.append((len(given - own), name, first_line(e)))
            continue
        fits.append((len(own - given), name, cfg, [k for k in defaults if k not in data]))
    fits.sort(key=lambda f: f[0])
    if not fits:
        _, name, reason = min(misfits)
        raise ValueError(f"{config_path}: not the config of any recipe in recipes/registry.py (closest, {name}: "
                         f"{reason}); evaluate the run's exported pipeline (OUTPUT/pipeline)")
    if len(fits) > 1 and fits[0][0] == fits[1][0]:
        raise ValueError(f"{config_path}: the config fits the recipes {[f[1] for f in fits if f[0] == fits[0][0]]} "
                         "alike; evaluate the run's exported pipeline (OUTPUT/pipeline)")
    _, name, cfg, absent = fits[0]
    if absent:
        raise ValueError(f"{config_path}: truncated or incomplete: it lacks the top-level keys {absent} that every "
                         f"{name} run's config.yaml has")
    return name, cfg


def _named_recipe(name: str, data: dict, config_path: Path) -> tuple[str, Any]:
    """The recipe step.json names, with the checkpoint's config read strictly as that recipe's."""
    from ..config import from_dict, to_dict

    absent = [k for k in to_dict(_registry()[name].config_class()()) if k not in data]
    if absent:
        raise ValueError(f"{config_path}: truncated or incomplete: it lacks the top-level keys {absent} that every "
                         f"{name} run's config.yaml has")
    try:
        return name, from_dict(_registry()[name].config_class(), data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{config_path}: not a {name} config ({first_line(e)})") from None


def read_checkpoint(checkpoint: str | Path) -> CheckpointRun:
    """The checkpoint's files, checked and named when one is missing, truncated or corrupt, and its recipe."""
    from ..checkpointing import STUDENT_FILE

    checkpoint = Path(checkpoint)
    step = read_json(checkpoint / "step.json")
    run_dir = checkpoint.parent.parent
    config_path = next((p for p in (checkpoint / "config.yaml", run_dir / "config.yaml") if p.is_file()), None)
    weights = checkpoint / STUDENT_FILE
    ema = weights.is_file()
    weights = weights if ema else checkpoint / "model.safetensors"
    if weights.is_file():
        check_safetensors(weights)
    missing = ([] if weights.is_file() else [f"{STUDENT_FILE} (nor model.safetensors)"]) + \
        ([] if config_path else [f"config.yaml (beside step.json, nor the run's at {run_dir / 'config.yaml'})"])
    if missing:
        raise ValueError(f"{checkpoint} is not a complete training checkpoint: it has no {' and no '.join(missing)}")
    data = read_yaml(config_path)
    if not isinstance(data, dict):
        raise ValueError(f"{config_path}: truncated or not a run's config (a YAML mapping), got "
                         f"{type(data).__name__}")
    data = {k: v for k, v in data.items() if k not in RECORD_KEYS}
    named = step.get("recipe") if isinstance(step, dict) else None  # step.json names it (older ones do not)
    recipe, cfg = _named_recipe(named, data, config_path) if named in _registry() else _which_recipe(data, config_path)
    return CheckpointRun(checkpoint=checkpoint, run_dir=run_dir, config_path=config_path, recipe=recipe, cfg=cfg,
                         weights=weights, ema=ema, step=int(step.get("step", -1)) if isinstance(step, dict) else -1)


def refuse_unsupported(run: CheckpointRun) -> None:
    """`gen` samples class-conditional pixel students; the others are measured through their export."""
    where = f"{run.export}" if run.export.is_dir() else f"{run.run_dir}/pipeline, written when the run finishes"
    if run.super_resolution:
        raise ValueError(f"{run.checkpoint} is a checkpoint of a super-resolution ({run.recipe}) run: measure its "
                         f"exported pipeline with `python eval/evaluate.py sr --model {where}`")
    if getattr(run.cfg.data, "prompts", None) is not None:
        raise ValueError(f"{run.checkpoint} is a checkpoint of a text-to-image ({run.recipe}) run: evaluate its "
                         f"exported pipeline ({where}) with --captions")


def _scratch_config(cfg: Any, scratch: Path) -> Any:
    """The run's config, writing nowhere but `scratch`: no resume, no tracker, full precision (evaluation
    samples the float32 weights, as the export does), a batch every process count divides."""
    train = cfg.train
    processes = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    fields = {f.name for f in dataclasses.fields(train)}
    changes = dict(output_dir=str(scratch), overwrite=False, report_to="none", mixed_precision="no",
                   batch_size=train.batch_size * processes)
    train = dataclasses.replace(train, **{k: v for k, v in changes.items() if k in fields})
    return dataclasses.replace(cfg, train=train, **({"resume": None} if hasattr(cfg, "resume") else {}))


def _link_caches(run_dir: Path, scratch: Path) -> None:
    """Teacher outputs the run solved once (trajectories, ODE pairs), linked so the rebuild reuses them; a
    rebuild that writes one anew replaces the link in `scratch`, never the run's file."""
    from .. import checkpointing

    for sub in ("", checkpointing.CACHE_DIR):  # "": caches of runs older than OUTPUT/cache
        folder = run_dir / sub
        if not folder.is_dir():
            continue
        for f in folder.glob("*.safetensors"):
            (scratch / sub).mkdir(parents=True, exist_ok=True)
            try:
                (scratch / sub / f.name).symlink_to(f.resolve())
            except OSError:
                pass  # recomputed instead


def build_student(run: CheckpointRun):
    """The student the run's recipe builds (`students(run)`), with the checkpoint's weights, in eval mode."""
    from safetensors.torch import load_file

    from ..student import RoutedStudent

    module = _registry()[run.recipe].module()
    with tempfile.TemporaryDirectory(prefix="stepdistill-eval-") as tmp:
        scratch = Path(tmp) / "run"
        scratch.mkdir()
        _link_caches(run.run_dir, scratch)
        try:
            built = module.setup(_scratch_config(run.cfg, scratch))
        except (ValueError, OSError) as e:
            raise ValueError(f"cannot rebuild the {run.recipe} student of {run.checkpoint} from {run.config_path}: "
                             f"{e}; or evaluate the run's exported pipeline ({run.export})") from None
        students = module.students(built)
    if len(students) != 1:
        raise ValueError(f"{run.checkpoint}: the {run.recipe} run trains {len(students)} separate students; "
                         f"evaluate its exported pipelines ({run.export})")
    student = students[0]
    state = load_file(str(run.weights))
    routed = isinstance(student, RoutedStudent)
    if routed:
        expected = {f"students.{k}.{n}" for k, s in enumerate(student.students) for n in s.generator.state_dict()}
    else:  # student.safetensors and accelerate's raw generator alike hold the generator's own keys
        expected = set(student.generator.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"{run.weights}: does not hold the weights of the {run.recipe} student that "
                         f"{run.config_path} builds ({len(missing)} of its keys missing"
                         f"{', e.g. ' + missing[0] if missing else ''}; {len(unexpected)} other keys"
                         f"{', e.g. ' + unexpected[0] if unexpected else ''})")
    try:
        student.load_state_dict(state)
    except RuntimeError as e:  # shapes
        reason = " ".join(line.strip() for line in str(e).splitlines()[1:3])[:300]
        raise ValueError(f"{run.weights}: does not fit the {run.recipe} student that {run.config_path} builds "
                         f"({reason})") from None
    return _recorded_sampler(_for_sampling(student), run.checkpoint)


def _recorded_sampler(student, checkpoint: Path):
    """The student samples as its checkpoint's `student.json` records (a checkpoint written before that record
    samples as its recipe builds it)."""
    from ..sampler_spec import STUDENT_JSON, read_student_json
    from ..student import RoutedStudent

    if not (checkpoint / STUDENT_JSON).is_file():
        return student
    spec, _ = read_student_json(checkpoint)
    if isinstance(student, RoutedStudent):
        return dataclasses.replace(student, students=[dataclasses.replace(s, sampler=spec) for s in student.students])
    return dataclasses.replace(student, sampler=spec)


def _for_sampling(student):
    """Eval mode, no gradients, and no EMA: the loaded weights are the ones to sample (the fresh EMA the rebuild
    made would otherwise stand in for them in `state_dict`)."""
    from ..student import RoutedStudent

    if isinstance(student, RoutedStudent):
        return dataclasses.replace(student, students=[_for_sampling(s) for s in student.students])
    student.generator.eval().requires_grad_(False)
    return dataclasses.replace(student, ema=None)
