"""What every recipe hands back: a `Student`, which samples, exports and checkpoints itself.

A student is a trained generator G(z) = D(sigma(t_0) z, t_0) (`roles.Generator`) with what sampling it
needs: its sampler (`sampler_spec.SamplerSpec`: its times, one or several, and the rule between them), the
conditioner that turns labels into network inputs, the sample space (pixels, or a VAE's latents) and the teacher it
was distilled from (the base of its export). A `RoutedStudent` (K students and a map from condition to
student, as in multi-student distillation) has the same surface, so the end of a run never branches on
how many students a recipe trained.

    student.sample(labels, generator, steps=None)  -> samples in the model's space (B, *shape)
    student.images(labels, generator, steps=None)  -> decoded images in [-1, 1]
    student.export(folder, model_card=...)         -> a diffusers folder that reproduces `sample`
    student.state_dict()                           -> the weights a user gets (EMA applied where kept)
"""

from __future__ import annotations

import copy

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch

from .sampler_spec import SamplerSpec, student_record
from .sharding import full, gathered
from .schedules import RectifiedFlow

SampleFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (labels, generator) -> images

__all__ = ["Student", "RoutedStudent", "AnyStudent"]


@dataclass(kw_only=True)
class Student:
    generator: torch.nn.Module  # roles.Generator, unwrapped (no DDP, no autocast wrapper)
    conditioner: object
    schedule: object
    sampler: SamplerSpec  # how it samples: its times, default steps, the sampler between them (student.json)
    space: object
    shape: tuple[int, ...]  # one sample in the model's space
    teacher: object  # teachers.Teacher: the export's base (its folder, scheduler config, source)
    ema: Optional[object] = None  # diffusers EMAModel over the generator's trainable parameters
    name: str = "student"
    # The student is this LoRA adapter on the teacher's network (LCM-LoRA): a text-to-image export also writes
    # it in diffusers' LoRA format (`lora/`), for `pipe.load_lora_weights` on the stock base pipeline.
    lora_adapter: Optional[str] = None
    tags: tuple[str, ...] = ()  # the recipe's model-card tags (an LCM-LoRA: "lcm-lora")
    # What the student was trained to forget (SFD): {"forget": [...], "override": [...] or "random", "form":
    # "class" or "prompt"}; its model card states it, and the forgetting benchmark measures it.
    forgetting: Optional[dict] = None

    @classmethod
    def from_setup(cls, setup, *, generator: torch.nn.Module, timesteps: torch.Tensor, ema=None,
                   name: str = "student", steps: int | None = None, lora_adapter: str | None = None,
                   gamma: float | None = None, tags: tuple[str, ...] = (), forgetting: dict | None = None
                   ) -> "Student":
        """The student of a recipe's run: its (prepared) generator with the run's `Setup` and its sampler
        (`SamplerSpec`: `steps` of its `timesteps` by default, re-noising x0 between steps or with TCD's `gamma`;
        the consistency boundary condition its network applies, read from the network itself). A generator
        trained as a LoRA adapter (`roles.make_generator(lora_rank=...)`) is that adapter's student unless told
        otherwise."""
        generator = setup.unwrap(generator)
        if lora_adapter is None:
            lora_adapter = getattr(getattr(generator, "denoiser", None), "adapter", None)
        schedule = setup.schedule
        boundary, timestep_scaling = generator.denoiser.sampling_boundary()
        sampler = SamplerSpec(timesteps=tuple(float(t) for t in timesteps), steps=steps, gamma=gamma,
                              boundary=boundary, timestep_scaling=timestep_scaling,
                              input_scale=generator.input_scale, flow=isinstance(schedule, RectifiedFlow),
                              num_train_timesteps=getattr(schedule, "num_train_timesteps", None) or 1000)
        return cls(generator=generator, conditioner=setup.conditioner, schedule=schedule, sampler=sampler,
                   space=setup.space, shape=setup.shape, teacher=setup.teacher, ema=ema, name=name,
                   lora_adapter=lora_adapter, tags=tuple(tags), forgetting=forgetting)

    @property
    def nfe(self) -> int:
        """Network evaluations of the default sampling."""
        return self.sampler.nfe

    @property
    def members(self) -> tuple["Student", ...]:
        """The students it is made of: itself (a `RoutedStudent`: its students)."""
        return (self,)

    @property
    def timesteps(self) -> torch.Tensor:
        """Its own times, float64, descending."""
        return self.sampler.tensor()

    @property
    def default_timesteps(self) -> torch.Tensor:
        return self.sampler.times()

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Samples in the model's space: z ~ N(0, I) drawn on the CPU from `generator`, then one step from
        sigma(t_0) z, or several with fresh noise from the same generator between them."""
        return self.sample_with(self.conditioner.cond(labels), len(labels), generator, steps)

    @torch.no_grad()
    def sample_with(self, cond: dict, n: int, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """`sample` for the network's condition keyword arguments themselves (e.g. `LRConditioner.condition` of
        low-resolution images from outside the training set, as an exported SR pipeline takes them)."""
        z = torch.randn(n, *self.shape, generator=generator).to(self.device)
        return self.sampler.sample(partial(self.generator.denoiser, **cond), self.schedule, z, generator, steps)

    def images(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Decoded images in [-1, 1]."""
        return self.space.decode(self.sample(labels, generator, steps))

    def sample_fn(self, steps: int | None = None) -> SampleFn:
        """`(labels, generator) -> samples`, the benchmark's interface."""
        return lambda labels, g: self.sample(labels, g, steps)

    # -- weights ------------------------------------------------------------------------------------

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.generator.named_parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's weights (`roles.Generator` keys) with the EMA's in place of the trained ones
        when an EMA is kept: what evaluation and export use. The generator itself is not changed."""
        # sharded weights (FSDP over CPU processes) are gathered whole: every process calls this
        state = {k: full(v).detach().clone() for k, v in self.generator.state_dict().items()}
        if self.ema is not None:
            for (name, _), shadow in zip(self._trainable(), self.ema.shadow_params):
                state[name] = full(shadow).detach().to(state[name].dtype).clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.load_state_dict(state)

    def use_ema(self) -> "Student":
        """Copy the EMA weights into the generator (the end of training); returns self."""
        if self.ema is not None:
            self.ema.copy_to([p for _, p in self._trainable()])
        return self

    def unwrapped(self, accelerator) -> "Student":
        """The same student on the plain module: no DDP wrapper, and no autocast that accelerate wraps
        around a prepared module's forward under mixed precision (training is over: evaluate and export
        the float32 weights a user loads, `float32_generator`). A sharded generator is gathered whole (every process
        calls this: `sharding.gathered`) with the EMA's weights, where kept, gathered in place of the trained ones."""
        generator = accelerator.unwrap_model(self.generator, keep_fp32_wrapper=False, keep_torch_compile=False)
        ema, whole = self.ema, gathered(generator)
        if whole is not generator and ema is not None:
            with torch.no_grad():
                for p, shadow in zip([p for p in whole.parameters() if p.requires_grad], ema.shadow_params):
                    p.copy_(full(shadow))
            ema = None
        return replace(self, generator=float32_generator(whole, self.teacher), ema=ema)

    # -- export -------------------------------------------------------------------------------------

    def call_options(self) -> dict:
        """The exported pipeline call's own arguments: the conditioner's (Flux's embedded guidance, the prompt length,
        the image size) and, for a w-conditioned student (LCM's guidance embedding), `guidance_scale = w + 1`:
        diffusers embeds w = guidance_scale - 1 (0.0 would run it at w = -1, outside what it was trained on)."""
        from .consistency import GuidanceConditioned

        options = self.conditioner.call_options()
        w = next((m.w for m in self.generator.modules() if isinstance(m, GuidanceConditioned)), None)
        return options if w is None else {**options, "guidance_scale": w + 1.0}

    def record(self, students: int = 1) -> str:
        """The text of `student.json`, kept in every checkpoint and export: how it samples (`sampler_spec`)."""
        return student_record(self.sampler, recipe=self.name, condition=self.conditioner.kind, shape=self.shape,
                              call=self.call_options(), students=students)

    def export(self, folder: str | Path, *, model_card: dict | None = None) -> Path:
        """A diffusers folder that samples as `sample` does, with `student.json` (`stepdistill.export.students`:
        the base pipeline with this network for a text-conditional student, a self-contained pipeline for a
        class-conditional or super-resolution one)."""
        from .export.students import export_student

        return export_student(self, folder, model_card)


@dataclass(kw_only=True)
class RoutedStudent:
    """K students and a map from condition to student (multi-student distillation): sampling sends each
    label to its student; export writes one folder per student and `routing.json`; weights are keyed
    `students.<k>.<name>`."""

    students: list[Student]
    route: Callable[[torch.Tensor], torch.Tensor]  # labels (B,) -> student index (B,)
    routing: dict = field(default_factory=dict)  # how `route` maps conditions, written with the export
    name: str = "student"

    def __post_init__(self) -> None:
        if not self.students:
            raise ValueError("a RoutedStudent needs at least one student")

    @property
    def nfe(self) -> int:
        return max(s.nfe for s in self.students)

    @property
    def device(self) -> torch.device:
        return self.students[0].device

    @property
    def shape(self) -> tuple[int, ...]:
        return self.students[0].shape

    @property
    def conditioner(self):
        return self.students[0].conditioner

    @property
    def space(self):
        return self.students[0].space

    @property
    def members(self) -> tuple[Student, ...]:
        return tuple(self.students)

    @property
    def sampler(self) -> SamplerSpec:
        """The students share one sampler (their times and steps)."""
        return self.students[0].sampler

    @property
    def generators(self) -> list[torch.nn.Module]:
        return [s.generator for s in self.students]

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Each student samples its own labels, in student order, from the one `generator`."""
        which = self.route(labels).to(labels.device)
        out = torch.empty(len(labels), *self.shape, device=labels.device)
        for k, student in enumerate(self.students):
            mine = (which == k).nonzero().flatten()
            if len(mine):
                out[mine] = student.sample(labels[mine], generator, steps)
        return out

    def images(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        return self.space.decode(self.sample(labels, generator, steps))

    def sample_fn(self, steps: int | None = None) -> SampleFn:
        return lambda labels, g: self.sample(labels, g, steps)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"students.{k}.{n}": v for k, s in enumerate(self.students) for n, v in s.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, s in enumerate(self.students):
            prefix = f"students.{k}."
            s.load_state_dict({n[len(prefix):]: v for n, v in state.items() if n.startswith(prefix)})

    def use_ema(self) -> "RoutedStudent":
        for s in self.students:
            s.use_ema()
        return self

    def unwrapped(self, accelerator) -> "RoutedStudent":
        return replace(self, students=[s.unwrapped(accelerator) for s in self.students])

    def record(self) -> str:
        return self.students[0].record(students=len(self.students))

    def export(self, folder: str | Path, *, model_card: dict | None = None) -> Path:
        """One pipeline folder that routes each condition to its student, or a folder per student and
        `routing.json` (`stepdistill.export.students.export_routed`)."""
        from .export.students import export_routed

        return export_routed(self, folder, model_card)


class AnyStudent(Protocol):
    """The surface `finish`, the benchmark and checkpoints use: `Student` and `RoutedStudent` both have it."""

    name: str

    @property
    def nfe(self) -> int: ...

    @property
    def members(self) -> tuple[Student, ...]: ...

    @property
    def sampler(self) -> SamplerSpec: ...

    @property
    def device(self) -> torch.device: ...

    def sample(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor: ...

    def images(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor: ...

    def sample_fn(self, steps: int | None = None) -> SampleFn: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def use_ema(self) -> "AnyStudent": ...

    def unwrapped(self, accelerator) -> "AnyStudent": ...

    def record(self) -> str: ...

    def export(self, folder: str | Path, *, model_card: dict | None = None) -> Path: ...


def float32_generator(generator: torch.nn.Module, teacher) -> torch.nn.Module:
    """`generator` itself when its weights are float32, else a float32 copy. A LoRA student's frozen base held in
    bf16 / fp16 under mixed precision is the teacher's network: the copy reads it again, exactly, from the teacher's
    source (`Teacher.network_copy`), so a merged export carries the teacher's weights plus the trained adapter, not
    their 16-bit rounding (which, early in training, exceeds the adapter's whole change)."""
    if all(p.dtype == torch.float32 for p in generator.parameters()):
        return generator
    copy_ = copy.deepcopy(generator).float()
    net, exact = copy_.net, teacher.network_copy(device="cpu").state_dict()
    with torch.no_grad():
        for key, value in net.state_dict().items():
            base = exact.get(key.replace(".base_layer.", "."))
            if base is not None and base.shape == value.shape and "lora_" not in key:
                value.copy_(base)
    return copy_
