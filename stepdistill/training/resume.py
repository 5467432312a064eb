"""What a resumed run may change, and making those changes real.

One rule. The keys that define a run (the model, loss and data sections, the seed, batch size, precision,
EMA decay, and `optim.update_ratio`, which shapes the step) must equal the checkpoint's: a difference is
refused before any work, naming each key with both values. The rest may change on resume: the optimisers'
settings (learning rates, betas, weight decay, eps, warm-up, schedule, clipping), which are applied to the
restored optimisers and schedulers (accelerate's `load_state` restores the old ones); max steps and the
time limit, after which the horizon is fitted anew; logging, checkpointing, evaluation and export.

Every checkpoint keeps the config it was written under (`config.yaml` beside `step.json`). The run's own
`config.yaml` keeps the config the run started with and appends each resume's record under `resumes`:
the step, the checkpoint, and every changed key with its old and new value.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import yaml

from ..config import RECORD_KEY, to_dict
from ..io import atomic_write_text

# Dotted keys (or section prefixes ending in ".") that may change on resume; everything else defines the run.
MAY_CHANGE = ("optim.", "train.max_steps", "train.time_limit_minutes", "train.log_every", "train.sample_every",
              "train.checkpoint_every", "train.keep_checkpoints", "train.report_to", "train.project", "train.run_name",
              "train.max_nonfinite_steps", "train.validation_",
              "train.output_dir", "train.overwrite", "data.embedding_cache_mib", "data.loader_workers", "eval.", "export.",
              "resume")
DEFINES_RUN = ("optim.update_ratio",)  # an optim key that shapes the step: which optimiser steps when
# Keys after whose change a fitted horizon no longer holds: it is fitted anew from this run's speed.
HORIZON_KEYS = ("train.max_steps", "train.time_limit_minutes")
CONFIG_FILE = "config.yaml"


def may_change(key: str) -> bool:
    if key in DEFINES_RUN:
        return False
    return any(key.startswith(p) if p.endswith(".") else key == p for p in MAY_CHANGE)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted key: leaf value}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every leaf that differs between two config dicts."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def checkpoint_config(checkpoint: Path) -> dict | None:
    """The config a checkpoint was written under (None for a checkpoint written before they kept one)."""
    path = Path(checkpoint) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config sections")
    data.pop(RECORD_KEY, None)
    return data


def check_resume(checkpoint: Path | None, config: Any) -> dict[str, tuple[Any, Any]]:
    """The keys `config` changes against `checkpoint`'s config, after refusing any that defines the run
    (one error listing each such key with the checkpoint's value and the new one)."""
    if checkpoint is None:
        return {}
    old = checkpoint_config(checkpoint)
    if old is None:
        return {}
    changed = changes(old, to_dict(config))
    refused = {k: v for k, v in changed.items() if not may_change(k)}
    if refused:
        listed = "; ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in refused.items())
        raise ValueError(f"cannot resume {checkpoint} with settings that define the run changed ({listed}). "
                         f"Resume with the checkpoint's values (they are in {Path(checkpoint) / CONFIG_FILE}), or "
                         f"start a new run in another train.output_dir. What may change on resume: learning rates "
                         f"and the rest of optim (not update_ratio), max_steps, the time limit, logging, eval, export")
    return changed


def record_resume(run_config: Path, config: Any, *, step: int, checkpoint: Path,
                  changed: dict[str, tuple[Any, Any]]) -> None:
    """Append a resume record to the run's config.yaml (written whole if the run had none: a checkpoint
    taken from another folder)."""
    record = {"step": step, "checkpoint": str(checkpoint),
              "changed": {k: {"old": a, "new": b} for k, (a, b) in changed.items() if k != "resume"}}
    data = None
    if run_config.is_file():
        try:
            data = yaml.safe_load(run_config.read_text())
        except yaml.YAMLError:
            pass
    if not isinstance(data, dict):
        data = to_dict(config)
    data.setdefault(RECORD_KEY, []).append(record)
    atomic_write_text(run_config, yaml.safe_dump(data, sort_keys=False))


# The settings each optimiser was made with (`make_optimizer`), applied again after a checkpoint's state
# replaced them; keyed by the torch optimiser, which accelerate's wrapper and the scheduler share.
_SETTINGS: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def remember_settings(optimizer, scheduler, **settings) -> None:
    _SETTINGS[optimizer] = dict(settings, scheduler=scheduler)


def apply_settings(accelerator) -> list[dict]:
    """Set every prepared (or sharded, `sharding`) optimiser's learning rate, betas, weight decay and eps, and its scheduler's base
    rate, to the values this run was configured with; the learning rate resumes at the schedule's factor
    for the restored step. Returns each optimiser's applied settings (for the resume record and tests)."""
    from ..sharding import all_optimizers

    applied = []
    for wrapped in all_optimizers(accelerator):
        opt = getattr(wrapped, "optimizer", wrapped)
        settings = _SETTINGS.get(opt)
        if settings is None:
            continue
        sched = settings["scheduler"]
        sched.base_lrs = [settings["lr"]] * len(opt.param_groups)
        for group, factor in zip(opt.param_groups, sched.lr_lambdas):
            group.update(initial_lr=settings["lr"], lr=settings["lr"] * factor(sched.last_epoch),
                         betas=tuple(settings["betas"]), weight_decay=settings["weight_decay"], eps=settings["eps"])
        sched._last_lr = [g["lr"] for g in opt.param_groups]
        applied.append({k: v for k, v in settings.items() if k != "scheduler"})
    return applied
