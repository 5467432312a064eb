"""Plan a GPU job before it starts: the memory each GPU needs for a recipe under a config, offline, before any
weight is loaded (`--plan` on every recipe's command line: `recipe.cli`).

    accelerate launch recipes/dmd2.py --config recipes/configs/dmd2/sd15.yaml --plan --gpus 16
    python recipes/sid.py --config recipes/configs/sid/sd3.yaml --plan train.micro_batch_size=4

Where the networks come from. The teacher's architecture is read from its configs, never from its weights: a
shipped model config (`assets/model_configs/<name>`, `stepdistill.model_configs`) named by its folder name or by
the hub id it mirrors (`HUB_IDS`), or a local diffusers folder's `<component>/config.json` files; the networks are
built on the meta device (shapes, no memory). A teacher that is neither is refused in one line. EDM's ImageNet-64
network has no hub release: a folder named as EDM's release (`.../edm-imagenet-64x64-cond-adm`, the preset's
path) that does not exist here is planned from `assets/model_configs/edm_imagenet64`.

What the recipe builds comes from the recipe: each recipe module declares `plan_roles(cfg) -> list[PlannedRole]`
(its roles: the frozen teacher, full trainable copies, LoRA adapters on a named base, small heads; which keep an
EMA, which optimiser steps them, and the passes that backpropagate through them, `Pass`). The plan builds those
roles on meta exactly as the recipe's factories would (copies without the teacher's adapters, LoRA adapters by
peft on the network they name, GAN heads sized by probing the bottleneck), and `tests/test_plan.py` checks, for
every registered recipe, that the declared roles are the ones its `setup` builds.

Memory per GPU, for N GPUs (1, 8 and any `--gpus`), each process training on its micro-batch
(`train.micro_batch_size`, else `train.batch_size / N`):

- precision (`train.mixed_precision`; "auto" is the launcher's `--mixed_precision`, else bf16, a GPU that has it):
  under bf16 / fp16 the frozen networks (teacher, a LoRA role's frozen base, text encoders, VAE; the VAE stays
  float32 under fp16) are held in bf16 / fp16; trained weights, their gradients, AdamW's two states and the EMA are
  float32; a frozen copy of a student (a consistency target) is float32, as the student it is copied from;
- data-parallel (DDP): every process holds every weight; with N > 1, DDP's gradient buckets hold a second copy of
  the gradients (`gradient_as_bucket_view` off, accelerate's default); activations include autocast's
  low-precision copies of the trained float32 weights, which the backward keeps;
- FSDP (accelerate's FSDP2, `recipes/accelerate/fsdp.yaml`): the networks accelerate prepares are sharded: every
  network a trained role lives on (a trained copy, a head; the teacher's own network when a LoRA role trains on it,
  its frozen weights included). Their parameters, gradients, optimiser states and EMA are divided by N; a network
  nothing trains on (the teacher beside full copies, text encoders, VAE, a consistency target) is held whole by
  every process. Activations are not divided; FSDP gathers each unit's low-precision weights and frees them after
  use, so autocast's weight copies are not held. Gathered units in flight are not counted.
- activations: measured on meta for the recipe's passes (`stepdistill.training.footprint`, which documents the
  rule of which passes are held at once): the heaviest update of a step at the micro-batch.

`plan(...)` returns a dict (JSON-ready; GiB); `format_plan` prints it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Literal, Optional

import torch
from torch import nn

from .footprint import GRAD_BYTES, STATES, role_rows, saved_for_backward

__all__ = ["LoRA", "Pass", "PlannedRole", "plan", "format_plan", "dmd_roles", "implicit_roles", "resolve_teacher",
           "run_activations", "DEFAULT_GPUS"]

DEFAULT_GPUS = (1, 8)
GIB = 2 ** 30
# Folders of networks that have no hub release, planned from a shipped config when they are not here
RELEASE_NAMES = {"edm-imagenet-64x64-cond-adm": "edm_imagenet64", "cifar10_cond_ddpm": "cifar10_cond_ddpm"}
# Text tokens per prompt (the prompt encoders' defaults): CLIP's 77; SD3 joins T5's 256 after them; Flux T5's 512
TOKENS = {"sd": 77, "sdxl": 77, "sd3": 77 + 256, "flux": 512}


# ----------------------------------------------------------------------------
# What a recipe declares.

@dataclass(frozen=True)
class LoRA:
    """A peft LoRA adapter: rank, alpha (None: = rank), target modules (None: `adapters.DEFAULT_TARGETS`), and its
    name on the network (None: the role's name)."""

    rank: int
    alpha: Optional[float] = None
    targets: Optional[tuple[str, ...]] = None
    name: Optional[str] = None

    def describe(self) -> str:
        from ..adapters import DEFAULT_TARGETS

        alpha = self.rank if self.alpha is None else self.alpha
        targets = self.targets or tuple(DEFAULT_TARGETS)
        shown = ", ".join(targets[:4]) + (f", +{len(targets) - 4}" if len(targets) > 4 else "")
        return f"LoRA r{self.rank} alpha {alpha:g} [{shown}]"


@dataclass(frozen=True)
class Pass:
    """A forward pass whose graph feeds the backward of `update` (named after the role, or roles, it steps), so
    its saved tensors are held until that backward. `weights`: the role's trainable weights take gradients here
    (its own update); `input`: the loss differentiates through the pass's input (a frozen network between a
    generator and its loss). `batch`: samples per micro-batch sample (classifier-free guidance's two branches: 2;
    a discriminator on real and generated: 2; a multi-student step's share: 1 / K). `part`: the whole network, or
    its encoder up to the bottleneck (`Denoiser.features`, a discriminator's). A head role's pass is the head on
    its base's bottleneck features."""

    update: str
    weights: bool = True
    input: bool = False
    batch: float = 1.0
    part: Literal["forward", "features"] = "forward"


KINDS = ("teacher", "copy", "lora", "head")


@dataclass(frozen=True)
class PlannedRole:
    """One network a recipe's `setup` builds, as `footprint.roles` names it.

    kind: "teacher" (the frozen teacher's network; views of it, a guided real score, are not roles), "copy" (a
    copy of role `of`'s network: trainable, a student or a fake score; frozen, a consistency target; `config`
    changes entries of the copied config, `width` < 1 builds a smaller network of the same class), "lora" (an
    adapter on role `of`'s network, or with `on_copy` on a frozen copy of it of its own), "head" (a small
    discriminator head of class `head` on role `of`'s bottleneck features, sized by its `for_denoiser`).
    `optimizers`: those that step its trainable weights (each keeps its states); `passes`: the forward passes
    that backpropagate through it (`backprop`)."""

    name: str
    kind: Literal["teacher", "copy", "lora", "head"]
    of: str = "teacher"
    trainable: bool = True
    lora: Optional[LoRA] = None
    on_copy: bool = False
    head: Optional[type] = None
    config: tuple[tuple[str, Any], ...] = ()
    width: float = 1.0
    ema: bool = False
    optimizers: tuple[str, ...] = ("AdamW",)
    gradient_checkpointing: bool = False
    passes: tuple[Pass, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"PlannedRole {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if (self.kind == "lora") != (self.lora is not None):
            raise ValueError(f"PlannedRole {self.name}: a LoRA role, and only one, has `lora`")
        if self.kind == "head" and self.head is None:
            raise ValueError(f"PlannedRole {self.name}: a head role names its class (`head`)")

    @classmethod
    def teacher(cls, *, gradient_checkpointing: bool = False, passes: Iterable[Pass] = ()) -> "PlannedRole":
        return cls("teacher", "teacher", trainable=False, optimizers=(), gradient_checkpointing=gradient_checkpointing,
                   passes=tuple(passes))

    @property
    def backprop(self) -> bool:
        return bool(self.passes)

    def describe(self) -> str:
        if self.kind == "teacher":
            return "frozen teacher"
        if self.kind == "head":
            return f"{self.head.__name__} on {self.of}'s bottleneck"
        if self.kind == "lora":
            where = f"a frozen copy of {self.of}" if self.on_copy else f"{self.of}'s network"
            return f"{'' if self.trainable else 'frozen '}{self.lora.describe()} on {where}"
        text = f"{'trainable' if self.trainable else 'frozen'} copy of {self.of}"
        if self.width < 1:
            text += f", width {self.width:g} (fresh weights)"
        if self.config:
            text += ", " + ", ".join(f"{k}={v}" for k, v in self.config)
        return text if self.trainable else text + " (EMA target)"


def dmd_roles(cfg, suffix: str = "", *, batch: float = 1.0, width: float = 1.0, tsm: bool = False
              ) -> list[PlannedRole]:
    """The roles `stepdistill.training.dmd.build` makes for one student (`suffix`: "_k" for multi-student
    distillation's student k): the fake score (a copy, or a LoRA on the teacher named `fake_score<suffix>`), the
    generator (a copy, a smaller network at `width`, or a LoRA on a frozen copy) and the GAN head on the fake score.
    Passes: the generator update holds the generator's forward (twice with DMD's regression loss) and, with the GAN,
    the fake score's encoder and the head on G's samples (input gradients only; the real and fake scores run under
    no_grad); the fake-score update holds the fake score's denoising forward and, with the GAN, its encoder and the
    head on real and generated samples (2x the batch). `tsm`: the generator has Teacher Score Matching's optimiser
    too (smaller students)."""
    m, loss, ema = cfg.model, cfg.loss, bool(cfg.train.ema_decay)
    g, f, h = f"generator{suffix}", f"fake_score{suffix}", f"head{suffix}"
    ckpt = m.gradient_checkpointing
    fake_passes = [Pass(f, batch=batch)]
    if loss.gan:
        fake_passes += [Pass(f, batch=2 * batch, part="features"),
                        Pass(g, weights=False, input=True, batch=batch, part="features")]
    if m.fake_score_lora_rank is None:
        fake = PlannedRole(f, "copy", gradient_checkpointing=ckpt, passes=tuple(fake_passes))
    else:
        fake = PlannedRole(f, "lora", lora=LoRA(m.fake_score_lora_rank), gradient_checkpointing=ckpt,
                           passes=tuple(fake_passes))
    gen_passes = (Pass(g, batch=batch),) * (2 if loss.regression_weight > 0 else 1)
    optimizers = ("AdamW", "AdamW") if tsm else ("AdamW",)
    if m.generator_lora_rank is None or width < 1:  # a smaller student is a network of its own, trained whole
        gen = PlannedRole(g, "copy", width=width, ema=ema, optimizers=optimizers, gradient_checkpointing=ckpt,
                          passes=gen_passes)
    else:
        gen = PlannedRole(g, "lora", lora=LoRA(m.generator_lora_rank, name="generator"), on_copy=True, ema=ema,
                          optimizers=optimizers, gradient_checkpointing=ckpt, passes=gen_passes)
    roles = [fake, gen]
    if loss.gan:
        from ..discriminator import GANHead

        roles.append(PlannedRole(h, "head", of=f, head=GANHead, passes=(
            Pass(f, batch=2 * batch), Pass(g, weights=False, input=True, batch=batch))))
    return roles


def implicit_roles(cfg) -> list[PlannedRole]:
    """The roles `stepdistill.training.implicit.setup` makes (SiD, SIM): the teacher, a fake score and a generator,
    full copies. The generator update backpropagates through both scores' forward at the noised samples (input
    gradients, 2x the batch under LSG guidance != 1); the fake-score update holds the fake score's forward (guided
    too) and, with one shared batch (`loss.fake_samples=shared`), the generator's forward, whose graph lives until
    the generator update."""
    m, loss = cfg.model, cfg.loss
    ckpt = m.gradient_checkpointing
    cfg_batch = 1.0 if loss.guidance == 1 else 2.0
    through = Pass("generator", weights=False, input=True, batch=cfg_batch)
    gen_passes = (Pass("generator"),) + ((Pass("fake_score"),) if loss.fake_samples == "shared" else ())
    return [PlannedRole.teacher(gradient_checkpointing=ckpt, passes=(through,)),
            PlannedRole("fake_score", "copy", gradient_checkpointing=ckpt,
                        passes=(Pass("fake_score", batch=cfg_batch), through)),
            PlannedRole("generator", "copy", ema=bool(cfg.train.ema_decay), gradient_checkpointing=ckpt,
                        passes=gen_passes)]


# ----------------------------------------------------------------------------
# The teacher, from configs, on meta.

@dataclass
class PlanTeacher:
    teacher: Any  # a `teachers.Teacher` whose network is on meta
    origin: str  # where its configs came from
    components: dict[str, nn.Module] = field(default_factory=dict)  # text encoders, VAE (text-to-image), on meta
    vae_config: Optional[dict] = None
    tokens: Optional[int] = None  # text tokens per prompt

    @property
    def net(self) -> nn.Module:
        return self.teacher.net


def _read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _build_component(folder: Path) -> nn.Module:
    """A network from its `config.json` (diffusers' `_class_name` or transformers' `architectures`), on meta."""
    config = _read(folder / "config.json")
    if "_class_name" in config:
        import diffusers

        cls = getattr(diffusers, config["_class_name"])
        with torch.device("meta"):
            return cls.from_config(cls.load_config(str(folder))).eval()
    import transformers

    cls = getattr(transformers, config["architectures"][0])
    with torch.device("meta"):
        return cls._from_config(cls.config_class.from_json_file(str(folder / "config.json"))).eval()


def _text_components(folder: Path, index: dict, build: Callable[[str], nn.Module]) -> tuple[dict, Optional[dict]]:
    """A text-to-image pipeline folder's text encoders and VAE (built by `build(component)`) and the VAE's config."""
    names = sorted(n for n in (index or {}) if n.startswith("text_encoder") and (folder / n / "config.json").is_file())
    if not names:
        names = sorted(p.name for p in folder.iterdir() if p.name.startswith("text_encoder")
                       and (p / "config.json").is_file())
    components = {n: build(n) for n in names}
    vae_config = None
    if (folder / "vae" / "config.json").is_file():
        components["vae"] = build("vae")
        vae_config = _read(folder / "vae" / "config.json")
    return components, vae_config


def _tokens(folder: Path, family: str) -> int:
    """Text tokens per prompt: the family's, bounded by a local T5 tokenizer's own length (a tiny pipeline's)."""
    tokens = TOKENS.get(family, 77)
    t5 = {"sd3": ("tokenizer_3", 256), "flux": ("tokenizer_2", 512)}.get(family)
    if t5 is not None and (folder / t5[0] / "tokenizer_config.json").is_file():
        limit = _read(folder / t5[0] / "tokenizer_config.json").get("model_max_length") or t5[1]
        tokens = tokens - t5[1] + min(t5[1], int(limit))
    return tokens


def _teacher(net: nn.Module, scheduler_config: dict, source: str, component: str, root: str, index: dict):
    from ..schedules import from_scheduler_config
    from ..teachers import Teacher

    schedule, prediction_type = from_scheduler_config(scheduler_config)
    return Teacher(net.requires_grad_(False), schedule, prediction_type, scheduler_config, source, component, {},
                   root, index)


def _from_folder(folder: Path, source: str) -> PlanTeacher:
    from ..families import PIXEL, family_of_network
    from ..teachers import DENOISER_COMPONENTS

    component = next((c for c in DENOISER_COMPONENTS if (folder / c / "config.json").is_file()), None)
    if component is None:
        raise ValueError(f"--plan: teacher folder {folder} has no unet/config.json or transformer/config.json")
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if not scheduler.is_file():
        raise ValueError(f"--plan: teacher folder {folder} has no scheduler/scheduler_config.json")
    index = _read(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    net = _build_component(folder / component)
    teacher = _teacher(net, _read(scheduler), source, component, str(folder), index)
    family = family_of_network(net)
    planned = PlanTeacher(teacher, str(folder))
    if family is not PIXEL:
        planned.components, planned.vae_config = _text_components(folder, index,
                                                                     lambda n: _build_component(folder / n))
        planned.tokens = _tokens(folder, family.name)
    return planned


def _from_model_config(name: str, source: str) -> PlanTeacher:
    from ..families import PIXEL, family_of_network
    from ..model_configs import MODEL_CONFIGS, build, preset_model
    from ..teachers import DENOISER_COMPONENTS

    parts = preset_model(name)
    component = next(c for c in DENOISER_COMPONENTS if c in parts)
    folder = MODEL_CONFIGS[name]
    index = _read(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    net = build(name, component)
    teacher = _teacher(net, _read(parts["scheduler"] / "scheduler_config.json"), source, component, str(folder), index)
    origin = f"assets/model_configs/{name}"
    planned = PlanTeacher(teacher, origin)
    family = family_of_network(net)
    if family is not PIXEL:
        planned.components, planned.vae_config = _text_components(folder, index, lambda n: build(name, n))
        planned.tokens = TOKENS.get(family.name, 77)
    return planned


def resolve_teacher(source: str) -> PlanTeacher:
    """The teacher `model.teacher` names, on meta, from configs only: a local diffusers folder (the shipped teachers
    and tiny pipelines included), a shipped model config by name or by the hub id it mirrors, or a release folder
    of `RELEASE_NAMES`; anything else is refused."""
    from ..model_configs import HUB_IDS, MODEL_CONFIGS
    from ..teachers import shipped_folder

    text = str(source)
    folder = shipped_folder(text)
    if folder is None and text in _tiny_names():
        from ..tiny import ensure_tiny_text_to_image

        folder = ensure_tiny_text_to_image(name=text)  # a few MB of random weights on the CPU, built once
    if folder is None and Path(text).expanduser().is_dir():
        folder = Path(text).expanduser()
    if folder is not None:
        return _from_folder(Path(folder), text)
    by_hub = {hub: name for name, hub in HUB_IDS.items() if hub}
    name = text if text in MODEL_CONFIGS else by_hub.get(text) or RELEASE_NAMES.get(Path(text).name)
    if name is not None:
        return _from_model_config(name, text)
    shipped = ", ".join(f"{n} ({HUB_IDS[n]})" if HUB_IDS.get(n) else n for n in MODEL_CONFIGS)
    raise ValueError(f"--plan: teacher {text!r} is neither a shipped model config nor a local folder with "
                     f"<component>/config.json files; shipped configs (assets/model_configs): {shipped}")


def _tiny_names() -> set[str]:
    from ..tiny import SHIPPED_NAMES

    return set(SHIPPED_NAMES)


def teacher_from(teacher: Any) -> PlanTeacher:
    """An already-built teacher (`teachers.Teacher`, or a bare diffusers network: a DDPM epsilon schedule assumed),
    rebuilt on meta from its network's config (its weights and adapters are not touched)."""
    from ..families import PIXEL, family_of_network
    from ..teachers import Teacher

    net = teacher.net if isinstance(teacher, Teacher) else teacher
    if not hasattr(type(net), "from_config"):
        raise ValueError(f"--plan: cannot rebuild a {type(net).__name__} from its config (not a diffusers model)")
    with torch.device("meta"):
        meta = type(net).from_config(dict(net.config)).eval()
    if isinstance(teacher, Teacher):
        planned = PlanTeacher(dataclasses.replace(teacher, net=meta.requires_grad_(False)),
                              f"the given {teacher.source}")
        root = Path(teacher.root) if teacher.root else None
    else:
        planned = PlanTeacher(_teacher(meta, {"_class_name": "DDPMScheduler"}, type(net).__name__, "unet", "", {}),
                              f"the given {type(net).__name__}")
        root = None
    family = family_of_network(meta)
    if family is not PIXEL and root is not None and root.is_dir():
        planned.components, planned.vae_config = _text_components(root, planned.teacher.index,
                                                                     lambda n: _build_component(root / n))
        planned.tokens = _tokens(root, family.name)
    elif family is not PIXEL:
        planned.tokens = TOKENS.get(family.name, 77)
    return planned


# ----------------------------------------------------------------------------
# Example inputs: the sample shape and the network's conditioning, on meta.

@dataclass
class Inputs:
    shape: tuple[int, ...]  # one sample in the denoised space
    cond: Callable[[int], dict]  # n -> the network's keyword arguments for n samples, on meta
    t: float  # a time in the schedule's range
    resolution: Optional[int] = None  # text-to-image: pixels

    def times(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.t, device="meta")


def _meta(n: int, *shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.zeros(n, *shape, dtype=dtype, device="meta")


def plan_inputs(planned: PlanTeacher, data) -> Inputs:
    """The sample shape and conditioning a run of `planned` with data section `data` trains on: text-to-image
    teachers at `data.resolution` (the family's default otherwise) with prompt embeddings of the family's shape;
    pixel teachers at their sample size, with class labels and (super-resolution) the concatenated LR image."""
    from ..families import PIXEL, family_of_network

    teacher = planned.teacher
    net, c = teacher.net, teacher.net.config
    family = family_of_network(net)
    t = float(teacher.schedule.t_max) * 0.5
    if family is not PIXEL:
        factor = 2 ** (len(planned.vae_config["block_out_channels"]) - 1) if planned.vae_config else 8
        resolution = family.resolution(factor, c) if data.resolution is None else int(data.resolution)
        multiple = family.latent_multiple(factor, c)
        if resolution < multiple or resolution % multiple:
            raise ValueError(f"data.resolution={resolution} must be a positive multiple of {multiple} for this teacher")
        side = resolution // factor
        shape = (family.latent_channels(c), side, side)
        tokens = planned.tokens or TOKENS.get(family.name, 77)

        def cond(n: int) -> dict:
            if family.name == "sd3":
                return {"encoder_hidden_states": _meta(n, tokens, c.joint_attention_dim),
                        "pooled_projections": _meta(n, c.pooled_projection_dim)}
            if family.name == "flux":
                return {"encoder_hidden_states": _meta(n, tokens, c.joint_attention_dim),
                        "pooled_projections": _meta(n, c.pooled_projection_dim), "guidance": _meta(n)}
            width = c.cross_attention_dim
            out = {"encoder_hidden_states": _meta(n, tokens, width if isinstance(width, int) else width[0])}
            if c.get("addition_embed_type") == "text_time":  # SDXL: the pooled embedding and six size ids
                ids = 6
                pooled = c.projection_class_embeddings_input_dim - ids * c.addition_time_embed_dim
                out["added_cond_kwargs"] = {"text_embeds": _meta(n, pooled), "time_ids": _meta(n, ids)}
            return out

        return Inputs(shape, cond, t, resolution)
    size = c.sample_size if isinstance(c.sample_size, int) else tuple(c.sample_size)
    hw = (size, size) if isinstance(size, int) else size
    scale = data.condition_scale or int(teacher.index.get("sr_scale") or 0)
    extra = c.in_channels - (c.get("out_channels") or c.in_channels) if scale else 0
    shape = (c.in_channels - extra, *hw)
    classes = c.get("num_class_embeds")

    def cond(n: int) -> dict:
        out = {}
        if classes:
            out["class_labels"] = torch.zeros(n, dtype=torch.long, device="meta")
        if extra:
            out["concat"] = _meta(n, extra, *hw)
        return out

    return Inputs(shape, cond, t)


def run_inputs(run: Any) -> Inputs:
    """A built run's sample shape and conditioning (its conditioner's null condition, or label 0's, as meta
    templates of any batch)."""
    s = run.setup
    labels = torch.zeros(1, dtype=torch.long, device=s.device)
    template = None
    if getattr(s.conditioner, "null_label", None) is not None or hasattr(s.conditioner, "encoder"):
        template = s.conditioner.uncond(labels)  # text: the null prompt's cached rows, no encoding
    if template is None:
        template = s.conditioner.cond(labels)

    def like(value, n: int):
        if isinstance(value, torch.Tensor):
            shape = (n, *value.shape[1:]) if value.ndim and value.shape[0] == 1 else tuple(value.shape)
            return torch.zeros(shape, dtype=value.dtype, device="meta")
        if isinstance(value, dict):
            return {k: like(v, n) for k, v in value.items()}
        return value

    return Inputs(tuple(s.shape), lambda n: like(template, n), float(s.schedule.t_max) * 0.5)


# ----------------------------------------------------------------------------
# The roles, built on meta.

@dataclass
class Built:
    planned: PlanTeacher
    roles: list[PlannedRole]
    nets: dict[str, nn.Module]  # per role: the network it runs (a LoRA role: the network carrying its adapter)
    adapters: dict[str, Optional[str]]  # per role: the adapter it runs with
    own: dict[str, list[nn.Parameter]]  # per role: the parameters it adds
    heads: dict[str, nn.Module]
    copies: set[int]  # ids of frozen copies' parameters (held in float32)
    prepared: set[int]  # ids of networks accelerate prepares (sharded under FSDP)

    def networks(self) -> dict[str, nn.Module]:
        """What `footprint.roles` would list: the teacher, every role's module, the text encoders and the VAE."""
        out = {"teacher": self.planned.net}
        for role in self.roles:
            if role.kind != "teacher":
                out[role.name] = self.module(role.name)
        texts = [m for n, m in self.planned.components.items() if n != "vae"]
        if texts:
            out["text_encoders"] = nn.ModuleList(texts)
        if "vae" in self.planned.components:
            out["vae"] = self.planned.components["vae"]
        return out

    def module(self, role: str) -> nn.Module:
        """The role's module: its head, or the network it runs."""
        return self.heads[role] if role in self.heads else self.nets[role]

    def denoiser(self, role: str):
        return self.planned.teacher.denoiser(net=self.nets[role], adapter=self.adapters[role])


def _adapter_params(net: nn.Module, adapter: str) -> list[nn.Parameter]:
    return [p for n, p in net.named_parameters() if f".{adapter}." in n]


def _copy_without_adapters(net: nn.Module) -> nn.Module:
    from ..adapters import adapter_names, delete_lora

    out = copy.deepcopy(net)
    for name in adapter_names(out):
        delete_lora(out, name)
    return out


def build(roles: list[PlannedRole], planned: PlanTeacher, inputs: Inputs) -> Built:
    """Every role of `roles` on meta, as the recipe's factories make it."""
    from ..adapters import add_lora
    from ..networks import smaller_network

    names = [r.name for r in roles]
    if len(set(names)) != len(names) or "teacher" not in names:
        raise ValueError(f"plan_roles must name each role once and include the teacher; got {names}")
    built = Built(planned, roles, {}, {}, {}, {}, set(), set())
    teacher = planned.net
    with torch.device("meta"):
        for role in roles:
            if role.kind != "teacher" and role.of not in built.nets:
                raise ValueError(f"role {role.name} is built on {role.of!r}, which no earlier role is")
            adapter = None
            if role.kind == "teacher":
                net, own = teacher, [p for n, p in teacher.named_parameters() if ".lora_" not in n]
            elif role.kind == "copy":
                source = built.nets[role.of]
                if role.width < 1:
                    net = smaller_network(source, role.width)
                elif role.config:
                    net = type(source).from_config({**source.config, **dict(role.config)})
                else:
                    net = _copy_without_adapters(source)
                net.requires_grad_(role.trainable)
                own = list(net.parameters())
                if not role.trainable:
                    built.copies |= {id(p) for p in own}
            elif role.kind == "lora":
                net = built.nets[role.of]
                if role.on_copy:
                    net = _copy_without_adapters(net).requires_grad_(False)
                adapter = role.lora.name or role.name
                add_lora(net, adapter, rank=role.lora.rank, alpha=role.lora.alpha,
                         target_modules=list(role.lora.targets) if role.lora.targets else None)
                adapter_own = _adapter_params(net, adapter)
                for p in adapter_own:
                    p.requires_grad_(role.trainable)
                if not role.trainable:  # a frozen copy of a trained adapter (a consistency target): float32
                    built.copies |= {id(p) for p in adapter_own}
                own = list(net.parameters()) if role.on_copy else adapter_own
            else:  # head
                base = built.denoiser(role.of)
                cond = inputs.cond(1)
                net = role.head.for_denoiser(base, _meta(1, *inputs.shape), inputs.t, **cond)
                net.requires_grad_(role.trainable)
                own = list(net.parameters())
                built.heads[role.name] = net
            built.nets[role.name], built.adapters[role.name], built.own[role.name] = net, adapter, own
            if role.trainable and role.kind != "teacher":
                built.prepared.add(id(net))
    return built


# ----------------------------------------------------------------------------
# Memory.

def _low_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def plan_precision(mixed_precision: str) -> str:
    """"auto" planned as the launcher's `--mixed_precision` if it gave one, else bf16 (a GPU that runs it)."""
    if mixed_precision != "auto":
        return mixed_precision
    return os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() or "bf16"


@dataclass
class Weights:
    """Bytes per process of the weights' memory, whole (`full`) and divided by N under FSDP (`sharded`)."""

    full: dict[str, float]
    sharded: dict[str, float]


def weight_bytes(built: Built, precision: str) -> Weights:
    low = 2 if precision in ("bf16", "fp16") else 4
    vae_bytes = 4 if precision == "fp16" else low
    full = dict(parameters=0.0, gradients=0.0, buckets=0.0, optimizer_states=0.0, ema=0.0)
    sharded = dict(full)
    seen: set[int] = set()
    for role in built.roles:
        net = built.module(role.name)
        into = sharded if id(net) in built.prepared else full
        states = sum(STATES.get(o, 2) for o in role.optimizers)
        for p in built.own[role.name]:
            if id(p) in seen:
                continue
            seen.add(id(p))
            n = p.numel()
            if p.requires_grad:
                into["parameters"] += 4 * n
                into["gradients"] += GRAD_BYTES * n
                into["buckets"] += GRAD_BYTES * n
                into["optimizer_states"] += 4 * states * n
                into["ema"] += 4 * n if role.ema else 0
            else:
                into["parameters"] += (4 if id(p) in built.copies else low) * n
    for name, module in built.planned.components.items():
        full["parameters"] += (vae_bytes if name == "vae" else low) * sum(p.numel() for p in module.parameters())
    return Weights(full, sharded)


# Each pass is measured at two batch sizes and extended linearly. Not 1 and 2: a UNet's first sample adds ~8% more
# saved bytes than each further one (measured), so 2 and 3 give the slope that holds from there on.
SAMPLES = (2, 3)
_MEASURED: dict[tuple, Any] = {}  # pass signature -> SavedBytes: one architecture's pass is measured once a process


def _signature(net: nn.Module) -> tuple:
    """What a pass's saved tensors depend on in a network: its class, config, parameters (name, shape, dtype,
    requires_grad: adapters and which weights train included) and gradient checkpointing."""
    config = getattr(net, "config", None)
    return (type(net).__name__, json.dumps(dict(config), sort_keys=True, default=str) if config is not None else "",
            tuple((n, tuple(p.shape), str(p.dtype), p.requires_grad) for n, p in net.named_parameters()),
            any(getattr(m, "gradient_checkpointing", False) is True for m in net.modules()))


def _shapes(value) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), str(value.dtype), value.requires_grad)
    if isinstance(value, dict):
        return tuple(sorted((k, _shapes(v)) for k, v in value.items()))
    return repr(value)


def _pass_bytes(built: Built, role: PlannedRole, p: Pass, samples: int, inputs: Inputs, networks: list[nn.Module],
                trainable: dict[int, bool], autocast: torch.dtype | None, master: list[nn.Parameter]):
    """What pass `p` of `role` saves for backward at `samples` samples, on meta (cached by signature). `master`: the
    weights held in float32 (trained, adapters, frozen copies of students); the others are in the compute dtype."""
    from ..discriminator import TimeAwareGANHead
    from ..networks import set_gradient_checkpointing

    for net in networks:
        net.requires_grad_(False)
    if p.weights:
        for q in built.own[role.name]:
            q.requires_grad_(trainable[id(q)])
    base = role.of if role.kind == "head" else role.name
    set_gradient_checkpointing(built.nets[base], role.gradient_checkpointing and role.kind != "head")
    x = _meta(samples, *inputs.shape)
    t, cond = inputs.times(samples), inputs.cond(samples)
    denoiser = built.denoiser(base)
    masters = {id(q) for q in master}
    teacher = built.planned.teacher
    key = (role.kind == "head", p.part, p.input, samples, str(autocast), tuple(inputs.shape), _shapes(cond),
           inputs.t, teacher.prediction_type, type(teacher.schedule).__name__, denoiser.residual, denoiser.learn_sigma,
           built.adapters[base], _signature(built.nets[base]),
           _signature(built.heads[role.name]) if role.kind == "head" else None,
           tuple(id(q) in masters for net in (built.nets[base], built.heads.get(role.name)) if net is not None
                 for q in net.parameters()))
    if key in _MEASURED:
        return _MEASURED[key]
    if role.kind == "head":
        with torch.no_grad():
            features = denoiser.features(x, t, **cond)
        features.requires_grad_(p.input)
        head = built.heads[role.name]
        if isinstance(head, TimeAwareGANHead):
            def fn():
                return head(features, torch.full((samples,), 0.5, device="meta"))
        else:
            def fn():
                return head(features)
    else:
        x.requires_grad_(p.input)
        call = denoiser.features if p.part == "features" else denoiser

        def fn():
            return call(x, t, **cond)
    if len(_MEASURED) > 256:
        _MEASURED.clear()
    _MEASURED[key] = saved_for_backward(fn, networks, autocast=autocast, master=master)
    return _MEASURED[key]


def measure(built: Built, inputs: Inputs, precision: str) -> dict[str, dict]:
    """Per update: the bytes its passes save for backward, as fixed + per_sample x micro-batch, and the part of them
    that is autocast's copies of float32 weights (`copies_*`); each pass measured on meta at `SAMPLES` samples and
    extended linearly (`Pass.batch` samples per micro-batch sample)."""
    from ..networks import set_gradient_checkpointing

    autocast = _low_dtype(precision) if precision in ("bf16", "fp16") else None
    networks = list({id(n): n for n in [*built.nets.values(), *built.heads.values()]}.values())
    trainable = {id(q): q.requires_grad for n in networks for q in n.parameters()}
    master = [q for net in networks for name, q in net.named_parameters()
              if trainable[id(q)] or ".lora_" in name or id(q) in built.copies]
    updates: dict[str, dict] = {}
    try:
        for role in built.roles:
            for p in role.passes:
                two, three = (_pass_bytes(built, role, p, n, inputs, networks, trainable, autocast, master)
                              for n in SAMPLES)
                slope, copies_slope = three.total - two.total, three.weight_copies - two.weight_copies
                entry = updates.setdefault(p.update, dict(fixed=0.0, per_sample=0.0, copies_fixed=0.0,
                                                          copies_per_sample=0.0, passes=[]))
                entry["fixed"] += two.total - 2 * slope
                entry["per_sample"] += slope * p.batch
                entry["copies_fixed"] += two.weight_copies - 2 * copies_slope
                entry["copies_per_sample"] += copies_slope * p.batch
                what = role.name if role.kind == "head" else f"{role.name} {p.part}"
                entry["passes"].append(f"{what}{' x%g' % p.batch if p.batch != 1 else ''}")
    finally:
        for n in networks:
            for q in n.parameters():
                q.requires_grad_(trainable[id(q)])
        for role in built.roles:  # as the recipe configured it
            if role.kind != "head":
                set_gradient_checkpointing(built.nets[role.name], role.gradient_checkpointing)
    return updates


def activation_bytes(updates: dict[str, dict], micro: float, *,
                     weight_copies: bool = True) -> tuple[float, Optional[str]]:
    """(bytes, update) of the heaviest update at micro-batch `micro`."""
    best, which = 0.0, None
    for name, u in updates.items():
        value = u["fixed"] + u["per_sample"] * micro
        if not weight_copies:
            value -= u["copies_fixed"] + u["copies_per_sample"] * micro
        if which is None or value > best:
            best, which = value, name
    return max(best, 0.0), which


# ----------------------------------------------------------------------------
# The plan.

def recipe_roles(recipe: ModuleType, cfg) -> list[PlannedRole]:
    roles_fn = getattr(recipe, "plan_roles", None)
    if roles_fn is None:
        raise ValueError(f"recipe {getattr(recipe, 'NAME', recipe.__name__)} declares no plan_roles(cfg): it cannot be "
                         "planned")
    return list(roles_fn(cfg))


def micro_batch(train, gpus: int) -> float:
    return float(train.micro_batch_size) if train.micro_batch_size else train.batch_size / gpus


def plan(recipe: ModuleType, cfg, gpus: Iterable[int] = DEFAULT_GPUS, *, teacher: Any = None) -> dict:
    """Per-GPU memory of `recipe` under `cfg` for each number of GPUs in `gpus`, data-parallel and FSDP, in GiB,
    with the roles (as footprint rows: `rows`; as declared: `roles`) and the activations per update. `teacher`: an
    already-built teacher (`teachers.Teacher` or a network) instead of `cfg.model.teacher`'s configs."""
    roles = recipe_roles(recipe, cfg)
    planned = resolve_teacher(cfg.model.teacher) if teacher is None else teacher_from(teacher)
    inputs = plan_inputs(planned, cfg.data)
    built = build(roles, planned, inputs)
    rows = role_rows(built.networks())
    precision = plan_precision(cfg.train.mixed_precision)
    weights = weight_bytes(built, precision)
    updates = measure(built, inputs, precision)
    declared = []
    for role in roles:
        own = built.own[role.name]
        declared.append(dict(role=role.name, kind=role.kind, what=role.describe(), params=sum(p.numel() for p in own),
                             trainable=sum(p.numel() for p in own if p.requires_grad), ema=role.ema,
                             backprop=role.backprop, optimizers=list(role.optimizers),
                             gradient_checkpointing=role.gradient_checkpointing,
                             sharded=id(built.module(role.name)) in built.prepared))
    for name, module in planned.components.items():
        declared.append(dict(role=name, kind="frozen", what="frozen VAE" if name == "vae" else "frozen text encoder",
                             params=sum(p.numel() for p in module.parameters()), trainable=0, ema=False,
                             backprop=False, optimizers=[], gradient_checkpointing=False, sharded=False))
    counts = sorted({1, *[int(g) for g in gpus]})
    table = []
    for n in counts:
        micro = micro_batch(cfg.train, n)
        entry = dict(gpus=n, micro_batch=micro)
        for mode in ("ddp", "fsdp"):
            f, s = weights.full, weights.sharded
            div = n if mode == "fsdp" else 1
            buckets = mode == "ddp" and n > 1
            act, peak = activation_bytes(updates, micro, weight_copies=mode == "ddp")
            mem = dict(parameters=f["parameters"] + s["parameters"] / div,
                       gradients=(f["gradients"] + s["gradients"] / div
                                  + ((f["buckets"] + s["buckets"]) if buckets else 0)),
                       optimizer_states=f["optimizer_states"] + s["optimizer_states"] / div,
                       ema=f["ema"] + s["ema"] / div, activations=act)
            mem = {k: v / GIB for k, v in mem.items()}
            mem["total"] = sum(mem.values())
            entry[mode] = mem
            entry.setdefault("peak_update", peak)  # the update whose activations peak (data-parallel's)
        table.append(entry)
    return dict(recipe=getattr(recipe, "NAME", recipe.__name__), teacher=str(cfg.model.teacher),
                model=planned.origin, precision=precision, resolution=inputs.resolution,
                sample_shape=list(inputs.shape),
                batch_size=cfg.train.batch_size, micro_batch_size=cfg.train.micro_batch_size, roles=declared, rows=rows,
                activations={u: dict(fixed_gib=v["fixed"] / GIB, per_sample_gib=v["per_sample"] / GIB,
                                     weight_copies_gib=(v["copies_fixed"] + v["copies_per_sample"]) / GIB,
                                     passes=v["passes"]) for u, v in updates.items()},
                gpus=table)


def format_plan(report: dict) -> str:
    """The plan as text: what is built, each role, the activations per update, then the memory per GPU for each
    number of GPUs (GiB; MiB for a plan under 1 GiB)."""
    shape = "x".join(map(str, report["sample_shape"]))
    where = f"{report['resolution']}px, latents {shape}" if report["resolution"] else f"samples {shape}"
    micro = report["micro_batch_size"]
    precision = "fp32" if report["precision"] == "no" else report["precision"]
    lines = [f"plan: {report['recipe']} on {report['teacher']} (configs: {report['model']}); {precision}; "
             f"{where}; batch {report['batch_size']}"
             f"{f', micro-batch {micro}' if micro else ' (per process: batch / GPUs)'}",
             f"{'role':<16}{'parameters':>15}{'trainable':>15}  {'EMA':<4}{'backprop':<9}what"]
    for r in report["roles"]:
        ckpt = " (checkpointed)" if r["gradient_checkpointing"] and r["backprop"] else ""
        lines.append(f"{r['role']:<16}{r['params']:>15,}{r['trainable']:>15,}  {'yes' if r['ema'] else '-':<4}"
                     f"{'yes' if r['backprop'] else '-':<9}{r['what']}{ckpt}"
                     f"{'; ' + '+'.join(r['optimizers']) if r['optimizers'] else ''}")
    big = max(row[mode]["total"] for row in report["gpus"] for mode in ("ddp", "fsdp")) >= 1
    unit, scale = ("GiB", 1) if big else ("MiB", 1024)  # a small model's plan in MiB
    lines.append(f"activations per update ({unit} per sample of the micro-batch; what its backward needs):")
    for name, u in report["activations"].items():
        lines.append(f"  {name:<14}{u['per_sample_gib'] * scale:>8.3f}  {', '.join(u['passes'])}")
    lines.append(f"per GPU ({unit})  {'GPUs':>5}{'micro':>7}{'params':>9}{'grads':>8}{'optim':>8}{'EMA':>7}"
                 f"{'activ.':>9}{'total':>9}")
    for row in report["gpus"]:
        for mode, label in (("ddp", "data-parallel"), ("fsdp", "FSDP")):
            m = {k: v * scale for k, v in row[mode].items()}
            lines.append(f"{label:<15}{row['gpus']:>5}{row['micro_batch']:>7g}{m['parameters']:>9.1f}{m['gradients']:>8.1f}"
                         f"{m['optimizer_states']:>8.1f}{m['ema']:>7.1f}{m['activations']:>9.1f}{m['total']:>9.1f}")
    lines.append("counted: weights as held (frozen in the compute dtype, trained float32), float32 gradients (DDP over "
                 "several GPUs: + its buckets), optimiser states, EMA, the heaviest update's saved activations; FSDP "
                 "divides the networks it shards (every network a role trains on). Not counted: transient working "
                 "memory, data, the CUDA context (~1 GiB). docs/memory.md.")
    return "\n".join(lines)


def run_activations(run: Any) -> dict:
    """A built run's activation estimate at its micro-batch: its recipe's passes (`plan_roles(run.cfg)`) measured on a
    meta rebuild of its teacher, at its sample shape and conditioning, in its precision."""
    module = sys.modules.get(type(run.cfg).__module__)
    if module is None or not hasattr(module, "plan_roles"):
        return {"mib": None, "reason": "not estimated (the recipe declares no plan_roles)"}
    roles = recipe_roles(module, run.cfg)
    s = run.setup
    inputs = run_inputs(run)
    built = build(roles, teacher_from(s.teacher), inputs)
    precision = s.accelerator.mixed_precision
    updates = measure(built, inputs, precision)
    micro = micro_batch(run.cfg.train, s.accelerator.num_processes)
    fsdp = str(getattr(s.accelerator, "distributed_type", "")).endswith("FSDP")
    value, peak = activation_bytes(updates, micro, weight_copies=not fsdp)
    return {"mib": value / 2**20, "micro_batch": micro, "peak_update": peak,
            "updates": {u: v["fixed"] / 2**20 + v["per_sample"] * micro / 2**20 for u, v in updates.items()}}
