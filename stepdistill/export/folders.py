"""An export folder: the network to save (unwrapped, LoRA merged), a travelling pipeline's folder, no local paths,
complete and pickle-free. Every folder appears in one rename (`io.atomic_dir`).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

from torch import nn

from ..io import atomic_dir
from ..sampler_spec import STUDENT_JSON
from .card import Usage, hub_reference, write_model_card

__all__ = ["PICKLE_SUFFIXES", "pixel_folder", "plain_network", "scrub_local_paths", "check_complete", "write_record",
           "seal"]


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def pixel_folder(folder: Path, nets: dict, scheduler, pipeline_file: Path, module: str, cls: str, config: dict, *,
                  card: dict, call: Usage, pipeline_tag: str | None = None, record: str | None = None) -> Path:
    """A travelling-pipeline folder: the networks, the scheduler, the pipeline's file, model_index.json naming it
    and carrying `config`, the model card; written in one rename."""
    import diffusers

    with atomic_dir(folder) as tmp:
        for name, each in nets.items():
            each.save_pretrained(tmp / name, safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        shutil.copyfile(pipeline_file, tmp / f"{module}.py")
        index = {"_class_name": [module, cls], "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", type(scheduler).__name__], **config,
                 **{name: ["diffusers", type(each).__name__] for name, each in nets.items()}}
        seal(tmp, index, call=call, pipeline_tag=pipeline_tag, card=card, record=record)
    return folder


def plain_network(net: nn.Module, adapter: str | None) -> nn.Module:
    """The network to save: unwrapped (DDP `.module`, torch.compile `_orig_mod`) and, if it carries peft LoRA
    layers, a copy with LoRA `adapter` merged into the base weights and every tuner layer replaced by its base."""
    from diffusers import ModelMixin
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ..adapters import adapter_names

    for wrapper in ("_orig_mod", "module", "_orig_mod"):  # torch.compile(DDP(compile(net)))
        inner = getattr(net, wrapper, None)
        net = inner if isinstance(inner, nn.Module) else net
    if not isinstance(net, ModelMixin):
        raise TypeError(f"the student must be a diffusers model (ModelMixin), got {type(net).__name__}")
    names = sorted(adapter_names(net))
    if not names:
        if adapter is not None:
            raise ValueError(f"adapter={adapter!r} was given but the network has no LoRA adapter")
        return net
    if adapter is None and len(names) > 1:
        raise ValueError(f"the network has LoRA adapters {names}: pass adapter=<name> to choose the student's")
    adapter = adapter or names[0]
    if adapter not in names:
        raise ValueError(f"the network has no LoRA adapter {adapter!r}; it has {names}")
    net = copy.deepcopy(net)  # the caller keeps training its adapters
    for name, layer in [(n, m) for n, m in net.named_modules() if isinstance(m, BaseTunerLayer)]:
        layer.merge(adapter_names=[adapter])
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(net, "peft_config"):
        del net.peft_config
    return net


def scrub_local_paths(folder: Path) -> None:
    """Drop `_name_or_path` entries that name a local folder from every JSON config of an export: diffusers
    and transformers record where a component was loaded from."""
    for path in folder.rglob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "_name_or_path" in data and (
                data["_name_or_path"] is None or hub_reference(data["_name_or_path"]) is None):
            del data["_name_or_path"]
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_complete(folder: Path) -> None:
    """A complete, pickle-free export: model_index.json, every component folder it names, safetensors weights."""
    index_path = folder / "model_index.json"
    if not folder.is_dir() or not index_path.is_file():
        raise ValueError(f"{folder} is not an exported pipeline: no model_index.json")
    index = json.loads(index_path.read_text())
    missing = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
               and all(isinstance(s, str) for s in v) and not (folder / k).is_dir()]
    if missing:
        raise ValueError(f"{folder} is incomplete: model_index.json names {missing} but those folders are missing")
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = [str(p.relative_to(folder)) for p in files if p.name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f"{folder} holds pickled files {pickles}; weights must be safetensors only")
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{folder} has no *.safetensors weights")


def seal(folder: Path, index: dict, *, call: Usage, pipeline_tag: str | None, card: dict, record: str | None) -> None:
    """The last writes of every pipeline folder: model_index.json, the model card, `student.json` (how the exported
    student samples: `sampler_spec.student_record`); then no local paths left, and complete."""
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    write_model_card(folder, pipeline_call=call.render(), pipeline_tag=pipeline_tag, **card)
    write_record(folder, record)
    scrub_local_paths(folder)
    check_complete(folder)


def write_record(folder: Path, record: str | None) -> None:
    if record is not None:
        (folder / STUDENT_JSON).write_text(record)
