"""Teachers: the named catalogue (the shipped `digits`, `digits-heldout`, `sr`, `sr-x2`, their `-edm` views,
and the tiny random pipelines `tiny-*` built on first use) and `load_teacher`, which reads a diffusers
denoising network and its scheduler config from a name, a local diffusers folder or a hub id into a `Teacher`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from .denoiser import Denoiser
from .networks import freeze
from .schedules import NoiseSchedule, from_scheduler_config

__all__ = ["Teacher", "TeacherLoadError", "load_teacher", "SHIPPED", "shipped_folder", "ASSETS"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# name -> folder ("tiny-sd", "tiny-sdxl", ... are built on first use); "digits-heldout": the control teacher, trained
# on the held-out digits only (far from its data, as teachers of real data are)
SHIPPED = {"digits": ASSETS / "digits_teacher", "digits-heldout": ASSETS / "digits_teacher_heldout",
           "sr": ASSETS / "sr_teacher", "sr-x2": ASSETS / "sr_x2_teacher"}


def shipped_folder(teacher: str | Path) -> Path | None:
    """The shipped teacher's folder that `teacher` names (its name, its "-edm" view, or the folder's path);
    None for any other teacher."""
    name = str(teacher).removesuffix("-edm")
    if name in SHIPPED:
        return SHIPPED[name]
    path = Path(name).expanduser().resolve()
    return next((folder for folder in SHIPPED.values() if folder.resolve() == path), None)


def _shipped(name: str) -> Path | None:
    from .tiny import SHIPPED_NAMES, ensure_tiny_text_to_image

    if name in SHIPPED_NAMES:  # a tiny random pipeline of a real family: smoke tests of the text-to-image path
        return ensure_tiny_text_to_image(name=name)
    return SHIPPED.get(name)


DENOISER_COMPONENTS = ("unet", "transformer")



class TeacherLoadError(ValueError):
    """A teacher that cannot be found or read; raised before any training work starts."""


@dataclass
class Teacher:
    net: nn.Module
    schedule: NoiseSchedule
    prediction_type: str
    scheduler_config: dict[str, Any]
    source: str
    component: str = "unet"  # the denoiser's sub-folder name in a pipeline folder
    extra: dict[str, Any] = field(default_factory=dict)  # model_index.json entries of other components
    root: str = ""  # the local folder or hub id everything was loaded from
    index: dict[str, Any] = field(default_factory=dict)  # the pipeline's model_index.json ({} for a bare network)
    # Reads the network again from its source, float32 on the CPU (`network_copy`); None for a teacher built in memory
    loader: Optional[Callable[[], nn.Module]] = field(default=None, repr=False, compare=False)

    @property
    def pipeline_class(self) -> str | None:
        """The diffusers pipeline class the teacher's folder names (`StableDiffusionXLPipeline`, ...), if any."""
        return self.index.get("_class_name")

    def load_component(self, name: str, *, dtype: torch.dtype | None = None):
        """Another pipeline component (vae, text_encoder, tokenizer, ...) by its model_index.json entry."""
        import importlib

        if name not in self.extra:
            raise TeacherLoadError(f"teacher {self.source} has no {name!r} component; it has {sorted(self.extra)}")
        library, class_name = self.extra[name]
        cls = getattr(importlib.import_module(library), class_name)
        kwargs = {"torch_dtype": dtype} if dtype is not None and hasattr(cls, "dtype") else {}
        try:
            return cls.from_pretrained(self.root, subfolder=name, **kwargs)
        except (OSError, ValueError) as e:
            raise TeacherLoadError(f"cannot load component {name!r} of teacher {self.source}: {e}") from None

    def network_copy(self, device: torch.device | str | None = None) -> nn.Module:
        """The teacher's network as a trainable role starts from: float32, without adapters, on `device` (default:
        the teacher's). Read again from its source (onto the CPU, then moved) when the teacher is held in a lower
        precision, so the copy is exact and no float32 teacher ever sits on the device; copied otherwise."""
        from .adapters import adapter_names, delete_lora

        param = next(self.net.parameters())
        device = param.device if device is None else torch.device(device)
        if self.loader is not None and param.dtype != torch.float32:
            return self.loader().to(device)
        net = copy.deepcopy(self.net).to(device).float()
        for name in adapter_names(net):  # a LoRA role sharing the teacher's network stays with the teacher
            delete_lora(net, name)
        return net

    def denoiser(self, *, adapter: str | None = None, net: nn.Module | None = None) -> Denoiser:
        n = self.net if net is None else net
        cfg = getattr(n, "config", {})
        learn_sigma = cfg.get("out_channels", 0) == 2 * cfg.get("in_channels", -1)
        sigma_data = self.scheduler_config.get("sigma_data", 0.5)
        return Denoiser(n, self.schedule, self.prediction_type, sigma_data=sigma_data, adapter=adapter,
                        learn_sigma=learn_sigma, residual=bool(self.index.get("sr_residual", False)))


# ----------------------------------------------------------------------------
# Loading.

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TeacherLoadError(f"cannot read {path}: {e}") from None


def _local_layout(root: Path) -> tuple[str, dict]:
    """Which sub-folder holds the denoiser, and model_index.json ({} where the folder has none)."""
    index = _read_json(root / "model_index.json") if (root / "model_index.json").is_file() else {}
    for name in DENOISER_COMPONENTS:
        if (root / name / "config.json").is_file():
            return name, index
    raise TeacherLoadError(f"teacher folder {root} has no unet/config.json or transformer/config.json; "
                           "expected a diffusers pipeline folder (or pass a hub id)")


def _components(index: dict, denoiser: str) -> dict:
    """model_index.json's component entries ([library, class]) other than the denoiser and the scheduler."""
    return {k: v for k, v in index.items() if not k.startswith("_") and k not in (denoiser, "scheduler")
            and isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is not None}


def _model_class(config: dict, where: str):
    import diffusers

    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if name else None
    if cls is None:
        raise TeacherLoadError(f"{where}: unknown model class {name!r} (not a diffusers model)")
    return cls


def load_teacher(source: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 revision: str | None = None) -> Teacher:
    """Load a teacher from `"digits"` (shipped; `"digits-edm"`: the same teacher in EDM's parameterisation,
    `stepdistill.edm_view`), a local diffusers folder, or a hub repository id.

    The scheduler config decides the schedule and prediction type; a folder without one is an error,
    since guessing the parameterisation silently ruins distillation.
    """
    if str(source).endswith("-edm") and str(source)[:-4] in SHIPPED:  # e.g. "digits-edm": an exact EDM view
        from .edm_view import as_edm

        return as_edm(load_teacher(str(source)[:-4], device=device))
    src = _shipped(str(source)) or Path(source)
    if str(source) in SHIPPED and not Path(src).exists():
        preset = {"sr": " --config recipes/configs/train_teacher/sr_x4.yaml",
                  "sr-x2": " --config recipes/configs/train_teacher/sr_x2.yaml",
                  "digits-heldout": " split=heldout output_dir=assets/digits_teacher_heldout"}.get(str(source), "")
        raise TeacherLoadError(f"the shipped teacher {source!r} is missing from {src}; "
                               f"create it with `python recipes/train_teacher.py{preset}`")
    if Path(src).exists():
        root = Path(src)
        if not root.is_dir():
            raise TeacherLoadError(f"teacher {root} is a file; expected a diffusers pipeline folder")
        component, index = _local_layout(root)
        sched_path = root / "scheduler" / "scheduler_config.json"
        if not sched_path.is_file():
            raise TeacherLoadError(f"teacher folder {root} has no scheduler/scheduler_config.json, so its "
                                   "prediction type and noise schedule cannot be read")
        scheduler_config = _read_json(sched_path)
        net_config = _read_json(root / component / "config.json")
        cls = _model_class(net_config, str(root / component))
        try:
            net = cls.from_pretrained(root, subfolder=component, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as e:
            raise TeacherLoadError(f"cannot load {root / component}: {e}") from None
        loader = _loader(cls.from_pretrained, root, subfolder=component, torch_dtype=torch.float32)
    else:
        net, scheduler_config, component, index = _load_from_hub(str(source), dtype, revision)
        loader = _loader(lambda: _load_from_hub(str(source), torch.float32, revision)[0])
    try:
        schedule, prediction_type = from_scheduler_config(scheduler_config)
    except ValueError as e:
        raise TeacherLoadError(f"teacher {source}: {e}") from None
    net = freeze(net.to(device))
    root = str(src) if Path(src).exists() else str(source)
    return Teacher(net, schedule, prediction_type, scheduler_config, str(source), component,
                   _components(index, component), root, index, loader=loader)


def _loader(load: Callable[..., nn.Module], *args, **kwargs) -> Callable[[], nn.Module]:
    """A frozen float32 CPU copy of a teacher's network, read from its source on call."""
    return lambda: freeze(load(*args, **kwargs)).float()


def _load_from_hub(repo_id: str, dtype: torch.dtype, revision: str | None):
    from diffusers import ConfigMixin
    from huggingface_hub import hf_hub_download

    try:
        index = json.loads(Path(hf_hub_download(repo_id, "model_index.json", revision=revision)).read_text())
        component = next((c for c in DENOISER_COMPONENTS if c in index), None)
        if component is None:
            raise TeacherLoadError(f"hub repository {repo_id} has no unet or transformer component")
        cls = getattr(__import__("diffusers"), index[component][1])
        net = cls.from_pretrained(repo_id, subfolder=component, torch_dtype=dtype, revision=revision)
        scheduler_config = dict(ConfigMixin.load_config(repo_id, subfolder="scheduler", revision=revision))
    except TeacherLoadError:
        raise
    except Exception as e:  # network errors, missing repos, gated models: one message, no traceback soup
        raise TeacherLoadError(
            f"teacher {repo_id!r} is not a local folder and could not be loaded from the hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass a local diffusers "
            f"folder, or 'digits' for the shipped teacher") from None
    return net, scheduler_config, component, index
