"""What `eval/evaluate.py --model` is given, told apart before anything loads, and the one message for what it
cannot measure.

`identify(spec)` reads only names, folder layouts and small files:

- `teacher`: a shipped name (`digits`, `digits-edm`, `sr`, ...), a hub id, or a teacher folder (a diffusers
  folder with unet/ or transformer/ and no stepdistill model card; `sr_scale` in model_index.json: an SR teacher);
- `pipeline`: an exported student pipeline (`stepdistill.export`), told by its `student.json` (how its student
  samples); `sr_pipeline`: an exported SR pipeline (a student conditioned on low-resolution images);
- `checkpoint`: a training checkpoint `OUTPUT/checkpoints/step_XXXXXXXX/` (`step.json`, `student.safetensors`,
  the run's `OUTPUT/config.yaml`), of any recipe (`stepdistill.evaluation.checkpoint`).

Everything else is refused (`ValueError`) with what it is and what to pass instead: a half-written checkpoint, a
LoRA export (`pytorch_lora_weights.safetensors`, for `load_lora_weights` on its base model), a multi-student export
of one folder per student (`routing.json`), a run's output folder, its `checkpoints/` folder, a weights file.
The files read here and every weights file a model would load are checked first, so a truncated or corrupt file
is named in one line (`<path>: truncated or not a safetensors file (...)`) instead of a loader's traceback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..io import check_safetensors, first_line
from ..sampler_spec import STUDENT_JSON

__all__ = ["ModelInput", "identify", "read_json", "read_yaml", "check_folder_files",
           "LORA_WEIGHTS"]

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name (`export.export_lora`)
EXPECTED = ("a name (digits, digits-edm, sr, sr-x2) or hub id, a teacher folder, an exported pipeline folder "
            "(OUTPUT/pipeline) or a training checkpoint (OUTPUT/checkpoints/step_XXXXXXXX)")


@dataclass(frozen=True)
class ModelInput:
    kind: str  # "teacher", "pipeline", "sr_pipeline" or "checkpoint"
    spec: str  # as given
    path: Optional[Path] = None  # the local folder, if any
    index: dict = field(default_factory=dict)  # model_index.json, where there is one


# ----------------------------------------------------------------------------
# Files, each named when it cannot be read.

def _read_text_as(path: str | Path, kind: str, parse, errors: tuple) -> Any:
    """`parse(text)` of the file at `path`; a missing, unreadable or cut file is one error naming it."""
    path = Path(path)
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, *errors) as e:
        raise ValueError(f"{path}: truncated or not a {kind} file ({first_line(e)})") from None


def read_json(path: str | Path) -> Any:
    return _read_text_as(path, "JSON", json.loads, (json.JSONDecodeError,))


def read_yaml(path: str | Path) -> Any:
    import yaml

    return _read_text_as(path, "YAML", yaml.safe_load, (yaml.YAMLError,))


def check_folder_files(folder: Path, depth: int = 2) -> None:
    """Every JSON and safetensors file of a diffusers folder (the folder and its components) is complete."""
    for path in sorted(_files(folder, depth)):
        if path.suffix == ".safetensors":
            check_safetensors(path)
        elif path.suffix == ".json":
            read_json(path)


def _files(folder: Path, depth: int):
    for entry in folder.iterdir():
        if entry.is_file():
            yield entry
        elif entry.is_dir() and depth > 1 and not entry.name.startswith("."):
            yield from _files(entry, depth - 1)


# ----------------------------------------------------------------------------
# Kinds.

def _shipped_names() -> set[str]:
    from ..teachers import SHIPPED

    return set(SHIPPED) | {f"{n}-edm" for n in SHIPPED}


def _looks_local(spec: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, explicitly relative or home-relative."""
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") >= 2 or spec.endswith("/")


def _is_stepdistill_export(folder: Path) -> bool:
    """An export of stepdistill's: its travelling pipeline, or a model card carrying the `stepdistill` tag."""
    card = folder / "README.md"
    if not card.is_file():
        return False
    try:
        from huggingface_hub import ModelCard

        tags = ModelCard.load(card).data.tags or []
    except Exception:  # an unreadable card says nothing either way
        return False
    return "stepdistill" in tags


def _run_folder(folder: Path) -> bool:
    """A recipe's train.output_dir: its checkpoints/, or its config.yaml beside the exported pipeline/."""
    return (folder / "checkpoints").is_dir() or ((folder / "config.yaml").is_file() and (folder / "pipeline").is_dir())


def identify(spec: str | Path) -> ModelInput:
    """What `spec` is (`ModelInput.kind`), or a ValueError saying what it is and what to evaluate instead."""
    from ..export import PIPELINE_MODULE, ROUTED_PIPELINE_MODULE, SR_PIPELINE_MODULE

    spec = str(spec)
    p = Path(spec).expanduser()
    if p.name.endswith(".tmp") or (p.is_dir() and not (p / "step.json").is_file() and any(
            (p / f).is_file() for f in ("model.safetensors", "student.safetensors", "optimizer.bin"))):
        raise ValueError(f"{p} is an incomplete checkpoint (written while a run was stopped): it has no step.json; "
                         "score a complete one (outputs/<run>/checkpoints/step_*)")
    if not p.exists():
        if spec in _shipped_names():  # its folder's files are checked like any teacher folder's
            from ..teachers import shipped_folder

            folder = shipped_folder(spec)
            return ModelInput("teacher", spec, folder if folder is not None and folder.is_dir() else None)
        if not _looks_local(spec):
            return ModelInput("teacher", spec)  # a hub id: `teachers.load_teacher` says whether it loads
        raise ValueError(f"--model {spec}: no such file or folder; expected {EXPECTED}")
    if p.is_file():
        what = "a weights file" if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt") else "a file"
        raise ValueError(f"--model {p} is {what}; --model takes a folder: {EXPECTED}")
    if (p / "step.json").is_file():
        read_json(p / "step.json")
        return ModelInput("checkpoint", spec, p)
    if (p / "model_index.json").is_file():
        index = read_json(p / "model_index.json")
        if not isinstance(index, dict):
            raise ValueError(f"{p / 'model_index.json'}: not a diffusers model index (a JSON object)")
        module = (index.get("_class_name") or [None])[0] if isinstance(index.get("_class_name"), list) else None
        if (p / STUDENT_JSON).is_file():  # an export: how its student samples is recorded beside it
            from ..sampler_spec import read_student_json

            _, record = read_student_json(p)
            return ModelInput("sr_pipeline" if record["condition"] == "lr" else "pipeline", spec, p, index)
        if module in (PIPELINE_MODULE, ROUTED_PIPELINE_MODULE, SR_PIPELINE_MODULE) or _is_stepdistill_export(p):
            raise ValueError(f"{p} is an export without {STUDENT_JSON}, the record of how its student samples: "
                             "export it again with this stepdistill, or evaluate one of the run's checkpoints "
                             "(OUTPUT/checkpoints/step_XXXXXXXX)")
        return ModelInput("teacher", spec, p, index)
    if (p / LORA_WEIGHTS).is_file():
        beside = p.parent if (p.parent / "model_index.json").is_file() else None
        instead = (f"evaluate the pipeline exported with it, {beside}" if beside is not None
                   else "evaluate the run's exported pipeline (OUTPUT/pipeline)")
        raise ValueError(f"{p} is a LoRA export ({LORA_WEIGHTS}, loaded with `pipe.load_lora_weights` on its base "
                         f"model), not a pipeline evaluate.py can sample: {instead}")
    if (p / "routing.json").is_file():
        raise ValueError(f"{p} is a multi-student export, one pipeline folder per student (routing.json) that "
                         "evaluate.py cannot route between: evaluate a training checkpoint of the run "
                         "(OUTPUT/checkpoints/step_XXXXXXXX), or export at most 8 students as one routed pipeline")
    if _run_folder(p):
        pipeline = p / "pipeline"
        hint = f"its exported pipeline {pipeline}" if pipeline.is_dir() else "its exported pipeline (OUTPUT/pipeline)"
        raise ValueError(f"{p} is a training run's output folder, not a model: evaluate {hint} or one of its "
                         f"checkpoints ({p / 'checkpoints'}/step_XXXXXXXX)")
    if any(c.is_dir() and c.name.startswith("step_") for c in p.iterdir()):
        raise ValueError(f"{p} holds training checkpoints: pass one of them ({p}/step_XXXXXXXX)")
    if any((p / c / "config.json").is_file() for c in ("unet", "transformer")):
        return ModelInput("teacher", spec, p)  # a diffusers folder without model_index.json: teachers.load_teacher
    raise ValueError(f"{p} is not a model evaluate.py knows (no model_index.json, step.json or unet/); expected "
                     f"{EXPECTED}")
