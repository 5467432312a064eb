"""What every recipe hands back: a `Student`, which samples, exports and checkpoints itself.

A student is a trained generator G(z) = D(sigma(t_0) z, t_0) (`roles.Generator`) with what sampling it
needs: its timesteps (one, or several with re-noising in between: `samplers.multistep`), the conditioner
that turns labels into network inputs, the sample space (pixels, or a VAE's latents) and the teacher it
was distilled from (the base of its export). A `RoutedStudent` (K students and a map from condition to
student, as in multi-student distillation) has the same surface, so the end of a run never branches on
how many students a recipe trained.

    student.sample(labels, generator, steps=None)  -> samples in the model's space (B, *shape)
    student.images(labels, generator, steps=None)  -> decoded images in [-1, 1]
    student.export(folder, model_card=...)         -> a diffusers folder that reproduces `sample`
    student.state_dict()                           -> the weights a user gets (EMA applied where kept)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Protocol

import torch

from .samplers import multistep, tcd
from .schedules import RectifiedFlow

SampleFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (labels, generator) -> images

__all__ = ["Student", "RoutedStudent", "AnyStudent", "student_timesteps"]


def student_timesteps(timesteps: torch.Tensor, steps: int | None) -> torch.Tensor:
    """The student's own times, or `steps` of them evenly strided from the first (a 4-step DMD2 student
    sampled in 2 steps runs 999 and 499, as LCM subsets its grid): a student is only trained at its own times."""
    if steps is None or steps == len(timesteps):
        return timesteps
    if not 1 <= steps <= len(timesteps):
        raise ValueError(f"steps={steps}: this student samples in 1..{len(timesteps)} of its times "
                         f"{[float(t) for t in timesteps]}")
    return timesteps[(torch.arange(steps) * len(timesteps)) // steps]


@dataclass(kw_only=True)
class Student:
    generator: torch.nn.Module  # roles.Generator, unwrapped (no DDP, no autocast wrapper)
    conditioner: object
    schedule: object
    timesteps: torch.Tensor  # float64, descending; the first is the generator's t_0
    space: object
    shape: tuple[int, ...]  # one sample in the model's space
    teacher: object  # teachers.Teacher: the export's base (its folder, scheduler config, source)
    ema: Optional[object] = None  # diffusers EMAModel over the generator's trainable parameters
    name: str = "student"
    # Steps by default, when the student may sample in any number of its times (a consistency student holds
    # its whole skip grid, 999, 979, ..., 19, and samples K of them as LCMScheduler does); None: all of them.
    steps: Optional[int] = None
    # The student is this LoRA adapter on the teacher's network (LCM-LoRA): a text-to-image export also writes
    # it in diffusers' LoRA format (`lora/`), for `pipe.load_lora_weights` on the stock base pipeline.
    lora_adapter: Optional[str] = None
    # Sampling between steps: None re-noises each x0 with fresh noise (consistency models, LCMScheduler);
    # a value samples with TCD's gamma (`samplers.tcd`, TCDScheduler's eta): 0 is a deterministic DDIM jump on
    # the student's x0, the sampler of multistep-consistency (segment) students.
    gamma: Optional[float] = None

    @classmethod
    def from_setup(cls, setup, *, generator: torch.nn.Module, timesteps: torch.Tensor, ema=None,
                   name: str = "student", steps: int | None = None, lora_adapter: str | None = None,
                   gamma: float | None = None) -> "Student":
        """The student of a recipe's run: its (prepared) generator with the run's `Setup`. A generator trained as
        a LoRA adapter (`roles.make_generator(lora_rank=...)`) is that adapter's student unless told otherwise."""
        generator = setup.unwrap(generator)
        if lora_adapter is None:
            lora_adapter = getattr(getattr(generator, "denoiser", None), "adapter", None)
        student = cls(generator=generator, conditioner=setup.conditioner, schedule=setup.schedule,
                      timesteps=timesteps, space=setup.space, shape=setup.shape, teacher=setup.teacher, ema=ema,
                      name=name, steps=steps, lora_adapter=lora_adapter, gamma=gamma)
        student_timesteps(timesteps, steps)  # a default step count it cannot sample fails here
        return student

    @property
    def nfe(self) -> int:
        """Network evaluations of the default sampling."""
        return len(self.default_timesteps)

    @property
    def default_timesteps(self) -> torch.Tensor:
        return student_timesteps(self.timesteps, self.steps)

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
        gen = self.generator
        z = torch.randn(n, *self.shape, generator=generator).to(self.device)
        den = partial(gen.denoiser, **cond)
        ts = student_timesteps(self.timesteps, self.steps if steps is None else steps)
        x = z * gen.input_scale
        if self.gamma is not None:
            return tcd(den, self.schedule, x, ts, gamma=self.gamma, generator=generator)
        return multistep(den, self.schedule, x, ts, generator=generator)

    def images(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Decoded images in [-1, 1]."""
        return self.space.decode(self.sample(labels, generator, steps))

    def sample_fn(self, steps: int | None = None) -> SampleFn:
        """`(labels, generator) -> samples`, the benchmark's interface."""
        return lambda labels, g: self.sample(labels, g, steps)

    def benchmarkable(self) -> bool:
        """The digits benchmark measures class-conditional 16x16 one-channel students; text-to-image
        students are measured by eval/ (FID / CLIP) on their exported pipeline."""
        from .conditioning import ClassConditioner

        return isinstance(self.conditioner, ClassConditioner) and tuple(self.shape) == (1, 16, 16)

    # -- weights ------------------------------------------------------------------------------------

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.generator.named_parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The generator's weights (`roles.Generator` keys) with the EMA's in place of the trained ones
        when an EMA is kept: what evaluation and export use. The generator itself is not changed."""
        state = {k: v.detach().clone() for k, v in self.generator.state_dict().items()}
        if self.ema is not None:
            for (name, _), shadow in zip(self._trainable(), self.ema.shadow_params):
                state[name] = shadow.detach().to(state[name].dtype).clone()
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
        the float32 weights a user loads)."""
        return replace(self, generator=accelerator.unwrap_model(self.generator, keep_fp32_wrapper=False))

    # -- export -------------------------------------------------------------------------------------

    def export(self, folder: str | Path, *, model_card: dict | None = None) -> Path:
        """A diffusers folder that samples as `sample` does (see `stepdistill.export`): the base pipeline
        with this unet for a text-conditional student, a self-contained pipeline for a class-conditional one."""
        from .conditioning import ClassConditioner, LRConditioner, TextConditioner
        from .export import export_class_conditional, export_text_to_image

        from .export import hub_reference

        card = {"base_model": hub_reference(self.teacher.source), "recipe": self.name, **(model_card or {})}
        timesteps = self.export_timesteps()
        net = self.generator.net
        options = self.scheduler_options()
        if isinstance(self.conditioner, TextConditioner):
            calls = self.conditioner.encoder.call_options()
            folder = export_text_to_image(folder, self.teacher.root, net, timesteps=timesteps, model_card=card,
                                          scheduler_options=options, adapter=self.lora_adapter, call_options=calls)
            if self.lora_adapter is not None:  # also as the LoRA itself, for the stock base pipeline
                from .export import export_lora

                export_lora(folder / "lora", net, self.lora_adapter, timesteps=timesteps, scheduler_options=options,
                            base_model=card["base_model"], call_options=calls, recipe=self.name)
            return folder
        if isinstance(self.conditioner, ClassConditioner):
            return export_class_conditional(folder, net, self.teacher.scheduler_config, timesteps=timesteps,
                                            null_label=self.conditioner.null_label, model_card=card,
                                            scheduler_options=options, adapter=self.lora_adapter)
        if isinstance(self.conditioner, LRConditioner) and not options:
            from .export import export_super_resolution

            return export_super_resolution(folder, net, self.teacher.scheduler_config, timesteps=timesteps,
                                           sr_scale=self.conditioner.scale, residual=self.generator.denoiser.residual,
                                           model_card=card, adapter=self.lora_adapter)
        raise TypeError(f"no export for a student conditioned by {type(self.conditioner).__name__}")

    def export_timesteps(self) -> list:
        """The exported scheduler's times: integer indices (VP-discrete), or sigmas in (0, 1] for flow students."""
        if isinstance(self.schedule, RectifiedFlow):
            return [round(float(t), 6) for t in self.default_timesteps]
        return [int(round(float(t))) for t in self.default_timesteps]

    def scheduler_options(self) -> dict:
        """What the exported scheduler needs beyond the teacher's schedule to sample as `sample` does: LCM's
        boundary scaling for a consistency function with it (`consistency.ConsistencyDenoiser`, "lcm"), and, for a
        student holding a skip grid {k-1, 2k-1, ..., N-1}, `original_inference_steps` = its length, so that
        `num_inference_steps=K` picks the K times `sample(steps=K)` does; TCD's gamma (a TCDScheduler) if set."""
        from .consistency import ConsistencyDenoiser, GuidanceConditioned

        options = {}
        den = self.generator.denoiser
        while isinstance(den, GuidanceConditioned):
            den = den.denoiser
        if isinstance(den, ConsistencyDenoiser):
            if den.boundary != "lcm":
                raise ValueError("the export's LCMScheduler applies LCM's boundary condition; a 'cm' consistency "
                                 "student has no stock-scheduler equivalent (train it with model.boundary=lcm)")
            options["timestep_scaling"] = den.timestep_scaling
        ts = [int(round(float(t))) for t in self.timesteps]
        n = len(ts)
        total = getattr(self.schedule, "num_train_timesteps", None) or 1000
        k = total // n
        if self.steps is not None and ts == [(i + 1) * k - 1 for i in reversed(range(n))]:
            options["original_inference_steps"] = n
        if self.gamma is not None:
            options["gamma"] = self.gamma
        return options


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

    def benchmarkable(self) -> bool:
        return all(s.benchmarkable() for s in self.students)

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

    def export(self, folder: str | Path, *, model_card: dict | None = None) -> Path:
        """One pipeline folder, loading in stock diffusers, whose pipeline routes each condition to its student
        (`routing["owner"]`; at most 8 students): class-conditional students route labels, text-to-image ones
        prompts (unseen prompts by their embedding, to the nearest student's mean). More students: a folder
        per student and `routing.json`. The model card lists the partition."""
        from .conditioning import ClassConditioner, TextConditioner
        from .export import ROUTED_MAX_STUDENTS, export_class_conditional, export_routed_text_to_image, hub_reference
        from .io import atomic_write_text

        folder = Path(folder)
        owner = self.routing.get("owner")
        first, k = self.students[0], len(self.students)
        routable = owner is not None and k <= ROUTED_MAX_STUDENTS
        card = {"base_model": hub_reference(first.teacher.source), "recipe": self.name, **(model_card or {})}
        text = isinstance(first.conditioner, TextConditioner)
        parts = [[c for c, o in enumerate(owner or []) if o == j] for j in range(k)]
        card["extra"] = (card.get("extra", "") + "\n\n## Students\n\n" + "\n".join(
            f"- student {j}: " + (f"prompts {', '.join(repr(first.conditioner.prompts[c]) for c in part)}" if text
                                  else f"classes {part}") for j, part in enumerate(parts))).strip()
        timesteps = first.export_timesteps()
        if routable and all(isinstance(s.conditioner, ClassConditioner) for s in self.students):
            return export_class_conditional(
                folder, [s.generator.net for s in self.students], first.teacher.scheduler_config,
                timesteps=timesteps, null_label=first.conditioner.null_label, model_card=card, owner=list(owner),
                scheduler_options=first.scheduler_options())
        if routable and text:
            conditioner = first.conditioner
            labels = torch.arange(conditioner.num_classes)
            embeddings = conditioner.embeddings(labels).double().mean(1)
            table = torch.tensor(owner)
            centroids = torch.stack([embeddings[table == j].mean(0) for j in range(k)])
            return export_routed_text_to_image(
                folder, first.teacher.root, [s.generator.net for s in self.students], timesteps=timesteps,
                prompts=list(conditioner.prompts), owner=list(owner), centroids=centroids, model_card=card,
                adapter=first.lora_adapter, scheduler_options=first.scheduler_options(),
                call_options=conditioner.encoder.call_options())
        for j, s in enumerate(self.students):
            s.export(folder / f"student_{j}", model_card=model_card)
        atomic_write_text(folder / "routing.json", json.dumps(
            {"students": [f"student_{j}" for j in range(k)], **self.routing}, indent=2) + "\n")
        return folder


class AnyStudent(Protocol):
    """The surface `finish`, the benchmark and checkpoints use: `Student` and `RoutedStudent` both have it."""

    name: str

    @property
    def nfe(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def sample(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor: ...

    def images(self, labels: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor: ...

    def sample_fn(self, steps: int | None = None) -> SampleFn: ...

    def benchmarkable(self) -> bool: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def use_ema(self) -> "AnyStudent": ...

    def unwrapped(self, accelerator) -> "AnyStudent": ...

    def export(self, folder: str | Path, *, model_card: dict | None = None) -> Path: ...
