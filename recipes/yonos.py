"""YONOS-SR: one-step super-resolution by scale distillation (Noroozi et al. 2023, "You Only Need One Step: Fast
Super-Resolution with Stable Diffusion via Scale Distillation", arXiv:2401.17258). No public code exists; this
recipe follows the paper's description.

    accelerate launch recipes/yonos.py                         # x2 teacher (shipped "sr-x2") -> x4 student
    accelerate launch recipes/yonos.py model.teacher=outputs/yonos_patches/pipeline model.student_scale=8 \
        train.output_dir=outputs/yonos_x8                      # the next iteration: the x4 student teaches x8

Algorithm: a x`s` super-resolution model is hard to train directly for large s, because its noisy-image targets
are ambiguous given so little input. Scale distillation trains the x`student_scale` student on what a teacher
of a smaller scale predicts from an easier input: for a real HR image x0 and a noised x_t at the teacher's
training levels, the student, given the x`student_scale` LR image, regresses the teacher's x0 prediction given
the x`teacher_scale` LR image of the same x0 and the same x_t (the "noise-level-adapted" target; no gradient
through the teacher), in the teacher's parameterisation's weighting. The student starts from the teacher's
weights and is a full diffusion model at every level; sampled in one step from pure noise it is the one-step
x4 model. Iterating (the paper's x2 -> x4 -> x8 chain) is running the recipe again with the exported student as
the teacher: an exported SR pipeline loads as a teacher. The paper's last stage, fine-tuning a latent decoder,
has no counterpart for pixel-space models.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

import torch

from stepdistill import losses
from stepdistill.conditioning import LRConditioner
from stepdistill.denoiser import native_loss_weight
from stepdistill.roles import make_generator, make_real_score
from stepdistill.time_sampling import FakeTimes, fake_score_times
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, RecipeConfig, Draw, EvalConfig, Setup, TrainConfig, check_optim,
                                  cli, make_optimizer, one_step_timesteps, run_recipe, single_network_step,
                                  trainable_params)

NAME = "yonos"


@dataclass
class ModelConfig:
    teacher: str = "sr-x2"  # an SR teacher of a smaller scale than the student's (its folder records sr_scale)
    student_scale: int = 4
    generator_timesteps: tuple[float, ...] = (999.0,)  # the student's sampling: one step from pure noise
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    # Training levels of the student (and the teacher's query): "teacher", the teacher's own training
    # levels (U[0, 1000) indices on VP), or "uniform" in native time.
    times: FakeTimes = "teacher"


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0


@dataclass
class YONOSConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   batch_size=32, ema_decay=0.999,
                                                                   output_dir="outputs/yonos_patches"))
    # The teacher is of another scale: its rows on x`student_scale` inputs would compare unlike models
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(teacher_rows="none"))


@dataclass(kw_only=True)
class Run:
    cfg: YONOSConfig
    setup: Setup  # the teacher's: its conditioner is the teacher's scale
    ts: torch.Tensor
    teacher: torch.nn.Module
    student: torch.nn.Module  # a Generator: its denoiser is trained at every level, it samples in one step
    condition: LRConditioner  # the student's scale, on the same real images
    opt: torch.optim.Optimizer
    sched: object
    ema: object


def setup(cfg: YONOSConfig) -> Run:
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data, need_images=True)
    if not isinstance(s.conditioner, LRConditioner):
        raise ValueError(f"scale distillation needs a super-resolution teacher (conditioned on a low-resolution "
                         f"image); {cfg.model.teacher} is conditioned by {type(s.conditioner).__name__}")
    teacher_scale, student_scale = s.conditioner.scale, cfg.model.student_scale
    resolution = s.shape[-1]
    if student_scale <= teacher_scale or resolution % student_scale:
        raise ValueError(f"model.student_scale={student_scale} must be larger than the teacher's scale "
                         f"{teacher_scale} and divide the resolution {resolution}")
    ts = one_step_timesteps(cfg.model.generator_timesteps, s.schedule)
    check_optim(cfg.optim, cfg.train.max_steps)
    d = s.conditioner.degradation
    condition = LRConditioner(s.dataset, replace(d, scale=student_scale), s.conditioner.extra_channels)
    student = make_generator(s.teacher, float(ts[0]), gradient_checkpointing=cfg.model.gradient_checkpointing)
    o = cfg.optim
    params = trainable_params(student)
    opt, sched = make_optimizer(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                warmup_steps=o.warmup_steps)
    student, opt, sched = s.prepare(student, opt, sched)
    ema = s.ema_of(student, cfg.train.ema_decay)
    return Run(cfg=cfg, setup=s, ts=ts, teacher=make_real_score(s.teacher), student=student, condition=condition,
               opt=opt, sched=sched, ema=ema)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """One update on the step's micro-batches, then the EMA (`single_network_step`)."""
    return single_network_step(draw, lambda view: regression_loss(run, view), run.setup.accelerator, run.student,
                               run.opt, run.sched, grad_clip=run.cfg.optim.grad_clip, ema=run.ema)


def regression_loss(run: Run, draw: Draw) -> tuple[torch.Tensor, dict[str, float]]:
    """The student, given the harder LR image, regresses the teacher's x0 given the easier one, at the same x_t."""
    s = run.setup
    real, labels = draw.real(s.real)  # HR images; labels index them (their own LR copies)
    t = draw.times(fake_score_times(run.cfg.loss.times), s.schedule)
    x_t = s.schedule.add_noise(real, draw.randn(*s.shape), t)
    with torch.no_grad():
        target = run.teacher(x_t, t, **s.conditioner.cond(labels))  # the teacher's scale
    x0 = run.student(x_t, t, **run.condition.cond(labels))  # the generator's denoiser at t (through DDP)
    weight = native_loss_weight(s.teacher.prediction_type, s.schedule.alpha(t), s.schedule.sigma(t))
    loss = losses.denoising_loss(x0, target, weight)
    return loss, {"loss": loss.item()}


def students(run: Run) -> list[Student]:
    student = Student.from_setup(run.setup, generator=run.student, timesteps=run.ts, ema=run.ema, name=NAME)
    return [replace(student, conditioner=run.condition)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: YONOSConfig) -> list:
    """The teacher (its target runs under no_grad) and the student, a full copy trained at every level."""
    from stepdistill.training.plan import Pass, PlannedRole

    return [PlannedRole.teacher(),
            PlannedRole("student", "copy", ema=bool(cfg.train.ema_decay),
                        gradient_checkpointing=cfg.model.gradient_checkpointing, passes=(Pass("student"),))]


def main(cfg: YONOSConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], YONOSConfig)
