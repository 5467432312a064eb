"""Training checkpoints through accelerate, written atomically, resumed with `resume=latest`.

A checkpoint is `OUTPUT/checkpoints/step_XXXXXXXX/`: accelerate's `save_state` (models in
safetensors, optimizers, schedulers, RNG states, registered objects such as the EMA), `student.safetensors`
(the student's weights as evaluated and exported, EMA applied: `Student.state_dict`) and `step.json`.
It is written under a `.tmp` name and renamed only once complete, so a run killed
while saving leaves the previous checkpoint as the latest good one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from pathlib import Path

from accelerate import Accelerator

from .sampler_spec import STUDENT_JSON

_NAME = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / "step.json").is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


STUDENT_FILE = "student.safetensors"
CACHE_DIR = "cache"  # teacher outputs a run solved once (`Setup.cache`)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, *, keep: int = 2,
                    student: dict | None = None, info: dict | None = None, config: dict | None = None,
                    record: str | None = None) -> Path:
    """Save the accelerator state for `step` (the number of completed steps) and the `student` weights
    (a state dict) with its `record` (`student.json`: how it samples, `Student.record`), keeping the newest `keep` checkpoints (0: all of them); `info` (JSON) goes into
    `step.json` beside the step, `config` (the run's config as a dict) into `config.yaml`, which a resume is
    checked against. Call on every process."""
    final = Path(output_dir) / "checkpoints" / f"step_{step:08d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if student is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in student.items()}, str(tmp / STUDENT_FILE))
        if record is not None:
            (tmp / STUDENT_JSON).write_text(record)
        if config is not None:
            import yaml

            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / "step.json").write_text(json.dumps({"step": step, **(info or {})}) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def claim_output_dir(output_dir: str | Path, *, resuming: bool, overwrite: bool, is_main: bool) -> None:
    """Make `output_dir` this run's (under its run lock): leftovers of a run killed while saving (`*.tmp`
    checkpoint folders, `.NAME.tmp-*` export folders) are removed; a folder holding another run's checkpoints
    is refused unless the run resumes it or `overwrite` is set, in which case its checkpoints, logs and
    cached teacher outputs are deleted. Call before any work."""
    root = Path(output_dir)
    found = checkpoint_dirs(root)
    if found and not resuming and not overwrite:
        raise FileExistsError(f"{root} holds another run's checkpoints (up to {found[-1].name}): continue it with "
                              f"resume=latest, or start over with train.overwrite=true (deletes them), or choose "
                              f"another train.output_dir")
    if not is_main:
        return
    litter = [*(root / "checkpoints").glob("*.tmp")] if (root / "checkpoints").is_dir() else []
    litter += [p for p in root.glob(".*.tmp-*") if p.is_dir()] if root.is_dir() else []  # io.atomic_dir
    for tmp in litter:
        shutil.rmtree(tmp, ignore_errors=True)
    if overwrite and not resuming:
        shutil.rmtree(root / CACHE_DIR, ignore_errors=True)
        for old in found:
            shutil.rmtree(old, ignore_errors=True)
        for log in root.glob("log_rank*.jsonl"):
            log.unlink()


def damage(path: Path) -> str | None:
    """Why checkpoint `path` cannot be resumed from, naming the first damaged file, or None. Reads headers and
    archive directories only (a truncated file fails there), not the tensors."""
    import zipfile

    import yaml

    from .io import check_safetensors, first_line

    step = Path(path) / "step.json"
    try:
        int(json.loads(step.read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{step}: unreadable ({type(e).__name__}: {str(e)[:120]})"
    for file in sorted(Path(path).iterdir()):
        if file.suffix == ".safetensors":
            try:
                check_safetensors(file)
            except ValueError as e:
                return str(e)
        elif file.suffix in (".bin", ".pt", ".pth", ".pkl") and not zipfile.is_zipfile(file) and _cut_pickle(file):
            return f"{file}: truncated or not a torch archive"
        elif file.name == "config.yaml":
            try:
                yaml.safe_load(file.read_text())
            except (OSError, yaml.YAMLError) as e:
                return f"{file}: unreadable ({first_line(e, 120)})"
    return None


def _cut_pickle(file: Path) -> bool:
    """Whether a file that is no zip archive is not a whole pickle either (cut short, or not a pickle): read
    opcode by opcode, executing nothing. A whole pickle naming code is no damage: `verify_checkpoint` refuses it."""
    import pickletools

    try:
        with open(file, "rb") as f:
            for _ in pickletools.genops(f):
                pass
    except Exception:  # genops raises ValueError, EOFError or struct errors on a cut or foreign stream
        return True
    return False


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """`None` -> start fresh; "latest" -> the newest undamaged checkpoint in `output_dir` (or fresh if there is
    none), saying which damaged ones it passed over; a path -> that checkpoint, which must be complete and
    undamaged. Call before any work starts."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoint_dirs(output_dir)
        passed = []
        for path in reversed(found):
            problem = damage(path)
            if problem is None:
                if passed:
                    warnings.warn(f"resume=latest: passed over damaged {'; '.join(passed)}; resuming from {path}",
                                  stacklevel=2)
                return path
            passed.append(problem)
        if passed:
            raise ValueError(f"resume=latest: every checkpoint in {Path(output_dir) / 'checkpoints'} is damaged "
                             f"({'; '.join(passed)}); start over with train.overwrite=true")
        return None
    path = Path(resume).expanduser()
    if not (path / "step.json").is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist or is incomplete (no step.json); "
                                f"complete ones: {[p.name for p in checkpoint_dirs(output_dir)] or 'none'}")
    problem = damage(path)
    if problem is not None:
        good = [p.name for p in checkpoint_dirs(output_dir) if p != path and damage(p) is None]
        raise ValueError(f"resume checkpoint {problem}; undamaged ones in {output_dir}: {good or 'none'}")
    return path


def checkpoint_info(path: Path) -> dict:
    """A checkpoint's `step.json`: its step and what the loop recorded beside it."""
    return json.loads((Path(path) / "step.json").read_text())


def checkpoint_step(path: Path) -> int:
    """The number of completed steps a complete checkpoint holds."""
    return int(checkpoint_info(path)["step"])


def _numpy_globals() -> list:
    """What accelerate's RNG-state file needs beyond tensors: numpy arrays (the NumPy generator's state)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def verify_checkpoint(path: Path) -> None:
    """Refuse a checkpoint whose pickled files hold anything but tensors and plain data. accelerate unpickles
    `custom_checkpoint_*.pkl` and `random_states_*.pkl` with `weights_only=False`, which runs whatever code a
    crafted file names; each is first read here with torch's restricted unpickler (`weights_only=True`,
    numpy arrays allowed), which executes nothing, so a crafted file is refused before accelerate opens it."""
    import pickle

    import torch

    for file in sorted(Path(path).iterdir()):
        if file.suffix not in (".pkl", ".bin", ".pt", ".pth"):
            continue
        try:
            with torch.serialization.safe_globals(_numpy_globals()):
                torch.load(file, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, ValueError, EOFError) as e:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise ValueError(f"refusing to resume from {path}: {file.name} is not plain tensors and data ({reason}); "
                             "it was not loaded. Resume only from checkpoints this toolkit wrote") from None


def load_checkpoint(accelerator: Accelerator, path: Path) -> int:
    """Restore the accelerator state after `verify_checkpoint`; returns the number of completed steps."""
    verify_checkpoint(path)
    accelerator.load_state(str(path))
    return checkpoint_step(path)
