"""The roles a recipe builds from its teacher: the trio every distribution-matching method shares (real
score, fake score, generator), and the target networks consistency methods add.

- `load_teacher(source)`: a diffusers denoising network and its scheduler config, from the shipped
  assets (`"digits"`), a local diffusers folder or a hub id; read once into a `Teacher`.
- `make_real_score`: the frozen teacher as a `Denoiser`.
- `make_fake_score`: the online score of the generator's distribution, a full trainable copy of the
  teacher, or a peft LoRA on the teacher's own network (SwiftBrush: adapters on for the fake score,
  off for the real score, so two networks' weights are in memory, not three).
- `make_generator`: a trainable copy of the teacher evaluated at a fixed input time (or K copies).
- `make_target` / `ema_update`: a frozen copy of a network and its EMA update (consistency targets).

`requires_grad` switching and gradient checkpointing live here so recipes never touch parameters.
"""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from .adapters import adapter_names, add_lora, checkpoint_with_adapters, delete_lora
from .denoiser import Denoiser
from .schedules import NoiseSchedule, from_scheduler_config

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

__all__ = ["Teacher", "load_teacher", "make_real_score", "make_fake_score", "make_generator", "Generator",
           "freeze", "trainable", "make_target", "ema_update", "set_gradient_checkpointing", "SHIPPED", "shipped_folder",
           "smaller_network"]


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
        from .edm_view import load_edm_view

        return load_edm_view(str(source)[:-4], device=device)
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
    else:
        net, scheduler_config, component, index = _load_from_hub(str(source), dtype, revision)
    try:
        schedule, prediction_type = from_scheduler_config(scheduler_config)
    except ValueError as e:
        raise TeacherLoadError(f"teacher {source}: {e}") from None
    net = freeze(net.to(device))
    root = str(src) if Path(src).exists() else str(source)
    return Teacher(net, schedule, prediction_type, scheduler_config, str(source), component,
                   _components(index, component), root, index)


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


# ----------------------------------------------------------------------------
# Parameters: freezing, trainability, checkpointing.

def freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


@contextlib.contextmanager
def trainable(module: nn.Module | None, flag: bool) -> Iterator[None]:
    """Temporarily set requires_grad on the parameters that are trainable in `module`'s role (None: nothing).

    Used to keep one network's gradients out of another's update (DMD2 trains the fake score and the
    generator in alternation): the parameters that were trainable on entry are toggled and restored.
    """
    params = [] if module is None else [p for p in module.parameters() if getattr(p, "_stepdistill_trainable", p.requires_grad)]
    for p in params:
        p._stepdistill_trainable = True
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def make_target(module: nn.Module) -> nn.Module:
    """A frozen copy of `module`: the target network of consistency training and distillation, updated
    only by `ema_update` (Song et al. 2023, theta^- <- sg(mu theta^- + (1 - mu) theta))."""
    return freeze(copy.deepcopy(module))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """target <- mu * target + (1 - mu) * online, parameter by parameter; buffers are copied. mu = 0 makes
    the target the online network (iCT / ECT: no EMA target), mu = 1 leaves it unchanged."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"EMA rate mu={mu} must lie in [0, 1]")
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    if t_params.keys() != o_params.keys():
        raise ValueError("target and online networks have different parameters")
    for name, p in t_params.items():
        p.lerp_(o_params[name].detach().to(p.dtype), 1.0 - mu)
    for (name, b), (_, ob) in zip(target.named_buffers(), online.named_buffers()):
        b.copy_(ob)


def rng_state(device: torch.device | str) -> tuple:
    """The random streams a forward pass draws from (dropout): the CPU's and, on CUDA, the device's."""
    device = torch.device(device)
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextlib.contextmanager
def replayed_rng(state: tuple, device: torch.device | str) -> Iterator[None]:
    """Run the block from the random streams of `state` (`rng_state`), then continue from where they were:
    consistency training's target pass then draws the online pass's dropout masks (iCT, ECT: "the same
    dropout RNG"), so the two differ only by their inputs."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def set_dropout(module: nn.Module, p: float | None) -> None:
    """Set every dropout layer's probability (None: leave the network's own)."""
    if p is None:
        return
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout={p} must lie in [0, 1)")
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def set_gradient_checkpointing(net: nn.Module, enabled: bool = True) -> None:
    """Recompute activations in the backward pass (diffusers models), adapter-aware (`checkpoint_with_adapters`)."""
    if enabled and hasattr(net, "enable_gradient_checkpointing"):
        net.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_with_adapters)
    elif not enabled and hasattr(net, "disable_gradient_checkpointing"):
        net.disable_gradient_checkpointing()


def smaller_network(net: nn.Module, width: float, *, seed: int = 0) -> nn.Module:
    """A freshly initialised network of `net`'s class and config with every block's channels times `width`
    (rounded to multiples of 8; group norms regrouped to divide them): a smaller student (multi-student
    distillation), about width^2 of the parameters. Seeded, so every process builds the same weights."""
    import math

    if not 0 < width <= 1:
        raise ValueError(f"a smaller network's width must lie in (0, 1], got {width}")
    config = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
    channels = [max(8, int(round(c * width / 8)) * 8) for c in config["block_out_channels"]]
    groups = math.gcd(int(config.get("norm_num_groups") or 32), *channels)
    config.update(block_out_channels=channels, norm_num_groups=groups)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(net).from_config(config).to(next(net.parameters()).device)


# ----------------------------------------------------------------------------
# The three roles.

def make_real_score(teacher: Teacher, *, gradient_checkpointing: bool = False) -> Denoiser:
    """The frozen teacher; with a LoRA fake score on the same network, adapters are off here.
    `gradient_checkpointing`: for losses that backpropagate through its activations (SiD, SIM)."""
    if gradient_checkpointing:
        set_gradient_checkpointing(teacher.net, True)
    return teacher.denoiser(adapter=None)


def make_fake_score(teacher: Teacher, *, lora_rank: int | None = None, lora_alpha: float | None = None,
                    target_modules: list[str] | None = None, gradient_checkpointing: bool = False,
                    adapter: str = "fake_score") -> Denoiser:
    """A trainable copy of the teacher, or (lora_rank set) a LoRA adapter named `adapter` on it (several fake
    scores on one teacher, as multi-student distillation's per-student ones, each take a name of their own)."""
    if lora_rank is None:
        net = copy.deepcopy(teacher.net).train().requires_grad_(True)
        set_gradient_checkpointing(net, gradient_checkpointing)
        return teacher.denoiser(net=net)
    add_lora(teacher.net, adapter, rank=lora_rank, alpha=lora_alpha, target_modules=target_modules)
    set_gradient_checkpointing(teacher.net, gradient_checkpointing)
    # peft marks only the adapter's weights trainable; the teacher's own weights stay frozen.
    return teacher.denoiser(adapter=adapter)


class Generator(nn.Module):
    """G(z) = D(sigma(t_init) z, t_init): a denoiser fed pure noise at a fixed time (DMD2: t = 999
    on SD, sigma = 80 on EDM; SiD: sigma_init = 2.5). `z` is unit Gaussian noise."""

    def __init__(self, denoiser: Denoiser, t_init: float):
        super().__init__()
        self.denoiser, self.t_init = denoiser, float(t_init)
        self.input_scale = float(denoiser.schedule.sigma(torch.tensor(self.t_init, dtype=torch.float64)))

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    def forward(self, z: torch.Tensor, t: torch.Tensor | float | None = None, **cond) -> torch.Tensor:
        """One step from unit noise `z` at t_init; with `t`, `z` is instead an input x_t at time t
        (a multistep generator's later steps, e.g. from backward simulation)."""
        if t is None:
            return self.denoiser(z * self.input_scale, self.t_init, **cond)
        return self.denoiser(z, t, **cond)


def make_generator(teacher: Teacher, t_init: float | None = None, *, copies: int = 1,
                   lora_rank: int | None = None, lora_alpha: float | None = None,
                   target_modules: list[str] | None = None,
                   gradient_checkpointing: bool = False, network: nn.Module | None = None) -> Generator | nn.ModuleList:
    """Trainable copies of the teacher bound to `t_init` (default: the schedule's t_max).

    `copies > 1` gives the K students of multi-student distillation as an `nn.ModuleList`.
    With `lora_rank`, each copy trains a LoRA adapter named "generator" instead of all weights.
    `network`: a student network of its own (a smaller one, `smaller_network`) in place of the teacher's copy.
    """
    t_init = teacher.schedule.t_max if t_init is None else t_init
    students = []
    for _ in range(copies):
        net = copy.deepcopy(teacher.net if network is None else network)
        for name in adapter_names(net):  # drop a LoRA fake score sharing the teacher's network
            delete_lora(net, name)
        if lora_rank is None:
            net.train().requires_grad_(True)
            adapter = None
        else:
            add_lora(net, "generator", rank=lora_rank, alpha=lora_alpha, target_modules=target_modules)
            net.train()
            adapter = "generator"
        set_gradient_checkpointing(net, gradient_checkpointing)
        students.append(Generator(teacher.denoiser(net=net, adapter=adapter), t_init))
    return students[0] if copies == 1 else nn.ModuleList(students)
