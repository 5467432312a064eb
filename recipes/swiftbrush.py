"""SwiftBrush: one-step text-to-image by variational score distillation (Nguyen & Tran 2024,
CVPR, arXiv:2312.05239), image-free.

    accelerate launch recipes/swiftbrush.py                                      # digits, 1 step, CPU minutes
    accelerate launch recipes/swiftbrush.py --config recipes/configs/swiftbrush/tiny_t2i.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/swiftbrush.py \
        --config recipes/configs/swiftbrush/sd21.yaml data.prompts=PROMPTS.txt

Algorithm (official code `train_swiftbrush.py`): no real images, only prompts (or class labels).
The fake score is a LoRA on the teacher itself (peft): adapters off is the teacher, adapters on the
fake score, so two denoising networks are in memory (teacher and generator), not three. Each step,
on the same generated batch x = G(z):
  1. generator: the VSD gradient (ProlificDreamer Eq. 9, SwiftBrush Eq. 6)
         w(t) (x0_lora^cfg - x0_teacher^cfg) with w(t) = alpha_t sigma_t in x0 units
     (= the paper's sigma_t^2 (eps_teacher - eps_lora)), both predictions classifier-free guided, fed to
     G through the surrogate 0.5 ||x - sg(x - grad)||^2;
  2. LoRA: its own denoising loss on sg(x) (the official alpha_t-scaled eps-MSE), with condition dropout
     so that its unconditional branch exists for guidance.
Adam, constant learning rates (the LoRA's much larger), gradient clipping, optional EMA.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from stepdistill import losses
from stepdistill.denoiser import native_loss_weight
from stepdistill.guidance import CFGDenoiser
from stepdistill.roles import make_fake_score, make_generator, make_real_score
from stepdistill.time_sampling import DiscreteRange, FakeTimes, fake_score_times
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, RecipeConfig, DataConfig, Draw, Setup, TrainConfig, check_optim,
                                  accumulate, check_step_range, cli, make_optimizer, one_step_timesteps,
                                  run_recipe, trainable_params, update)

NAME = "swiftbrush"

# LoRA targets: attention projections (SD's to_q/to_v in the official code) plus the residual blocks'
# convolutions and time projections, which small pixel UNets with few attention layers need.
DIGITS_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"]


@dataclass
class ModelConfig:
    teacher: str = "digits"  # "digits", a local diffusers folder, or a hub id
    generator_timesteps: tuple[float, ...] = (999.0,)  # SwiftBrush: pure noise at t = 999
    lora_rank: int = 32  # the fake score's LoRA on the teacher (official: 64)
    lora_alpha: Optional[float] = None  # None: = rank (official: 108 with rank 64)
    lora_targets: tuple[str, ...] = tuple(DIGITS_LORA_TARGETS)
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    real_guidance: float = 1.0  # CFG of the teacher (official README 4.5)
    fake_guidance: float = 1.0  # CFG of the LoRA fake score (official: the same as the teacher's)
    min_step: float = 0.02  # VSD times: an index drawn from [min_step, max_step) of the levels (t ~ U[20, 981))
    max_step: float = 0.98
    # LoRA denoising times: "teacher", the teacher's training levels (official: t ~ U[0, 1000) indices), or
    # "uniform" in native time.
    fake_times: FakeTimes = "teacher"


@dataclass
class OptimConfig:
    # Official 1e-6 (G) / 1e-3 (LoRA). On digits FD fell from 2.19 to 0.38, 0.31 and 0.27 as the
    # generator's rate went 2e-4, 5e-5, 2.5e-5, 1.25e-5: VSD's mode seeking collapses fast learners.
    lr_generator: float = 1.25e-5
    lr_lora: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # constant learning rates
    grad_clip: float = 1.0


@dataclass
class SwiftBrushConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   output_dir="outputs/swiftbrush_digits"))
    data: DataConfig = field(default_factory=DataConfig)  # prompt_dropout 0.1 for the LoRA, as official


@dataclass(kw_only=True)
class Run:
    cfg: SwiftBrushConfig
    setup: Setup
    ts: torch.Tensor
    real_score: torch.nn.Module  # the teacher, adapters off
    fake_score: torch.nn.Module  # the same network, LoRA on (prepared: DDP-wrapped when distributed)
    generator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_f: torch.optim.Optimizer
    sched_g: object
    sched_f: object
    ema: object


def setup(cfg: SwiftBrushConfig) -> Run:
    """Validate, build the teacher-with-LoRA and the generator, optimisers. Errors raise here."""
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data)
    teacher = s.teacher
    ts = one_step_timesteps(cfg.model.generator_timesteps, teacher.schedule)
    check_optim(cfg.optim, cfg.train.max_steps)
    check_step_range(cfg.loss)
    if cfg.model.lora_rank < 1:
        raise ValueError(f"model.lora_rank={cfg.model.lora_rank}: SwiftBrush's fake score is a LoRA (rank >= 1)")
    guided = cfg.loss.real_guidance != 1 or cfg.loss.fake_guidance != 1
    if guided and s.conditioner.uncond(torch.zeros(1, dtype=torch.long)) is None:
        raise ValueError("guidance != 1 needs a teacher with an unconditional branch")
    # The generator first (a plain copy), then the LoRA on the teacher's own network.
    generator = make_generator(teacher, float(ts[0]), gradient_checkpointing=cfg.model.gradient_checkpointing)
    fake_score = make_fake_score(teacher, lora_rank=cfg.model.lora_rank, lora_alpha=cfg.model.lora_alpha,
                                 target_modules=list(cfg.model.lora_targets),
                                 gradient_checkpointing=cfg.model.gradient_checkpointing)
    o = cfg.optim
    gen_params = trainable_params(generator)
    opt_g, sched_g = make_optimizer(gen_params, lr=o.lr_generator, betas=o.betas, weight_decay=o.weight_decay,
                                    warmup_steps=o.warmup_steps, name="generator")
    opt_f, sched_f = make_optimizer(trainable_params(fake_score), lr=o.lr_lora, betas=o.betas,
                                    weight_decay=o.weight_decay, warmup_steps=o.warmup_steps, name="fake_score")
    generator, fake_score, opt_g, opt_f, sched_g, sched_f = s.prepare(
        generator, fake_score, opt_g, opt_f, sched_g, sched_f)
    ema = s.ema_of(generator, cfg.train.ema_decay)
    return Run(cfg=cfg, setup=s, ts=ts, real_score=make_real_score(teacher), fake_score=fake_score,
               generator=generator, opt_g=opt_g, opt_f=opt_f, sched_g=sched_g, sched_f=sched_f, ema=ema)


def cond_and_uncond(denoiser, scale: float, x_t, t, conditioner, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditional and unconditional x0 predictions (one batched call); at scale 1 only the first
    is needed and is returned twice, since the guided prediction is then the conditional one."""
    cond = conditioner.cond(labels)
    if scale == 1:
        x0 = denoiser(x_t, t, **cond)
        return x0, x0
    return CFGDenoiser(denoiser, scale).branches(x_t, t, uncond=conditioner.uncond(labels), **cond)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """The generator's VSD update, then the LoRA's on the same (detached) samples; each phase over the step's
    micro-batches (`accumulate`)."""
    cfg, s = run.cfg, run.setup
    logs, (x, labels) = accumulate(draw, lambda view: vsd_loss(run, view))
    gen_params = trainable_params(run.generator)
    update(s.accelerator, gen_params, run.opt_g, run.sched_g, grad_clip=cfg.optim.grad_clip)
    if run.ema is not None:
        run.ema.step(gen_params)
    more, _ = accumulate(draw, lambda view, x, labels: lora_loss(run, view, x, labels), x, labels)
    update(s.accelerator, trainable_params(run.fake_score), run.opt_f, run.sched_f, grad_clip=cfg.optim.grad_clip)
    return logs | more


def vsd_loss(run: Run, draw: Draw) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """1. Generator: VSD with both predictions guided; no gradient through either network. Also returns the
    detached samples and their labels, which the LoRA then denoises."""
    cfg, s = run.cfg, run.setup
    schedule, conditioner, shape = s.schedule, s.conditioner, s.shape
    labels = draw.labels(conditioner)
    x = run.generator(draw.randn(*shape), **conditioner.cond(labels))
    t = draw.times(DiscreteRange(cfg.loss.min_step, cfg.loss.max_step), schedule)
    x_t = schedule.add_noise(x.detach(), draw.randn(*shape), t)
    fake = run.setup.unwrap(run.fake_score)
    with torch.no_grad():
        real_c, real_u = cond_and_uncond(run.real_score, cfg.loss.real_guidance, x_t, t, conditioner, labels)
        fake_c, fake_u = cond_and_uncond(fake, cfg.loss.fake_guidance, x_t, t, conditioner, labels)
    weight = schedule.alpha(t) * schedule.sigma(t)  # sigma_t^2 in eps units
    loss_vsd = losses.vsd_loss(x, real_c, real_u, fake_c, fake_u, cfg.loss.real_guidance, cfg.loss.fake_guidance, weight)
    return loss_vsd, {"loss_vsd": loss_vsd.item()}, x.detach(), labels


def lora_loss(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """2. LoRA: denoising on the generator's detached samples, labels dropped to null with prob. prompt_dropout."""
    cfg, s = run.cfg, run.setup
    schedule, conditioner, shape = s.schedule, s.conditioner, s.shape
    t = draw.times(fake_score_times(cfg.loss.fake_times), schedule)
    x_t = schedule.add_noise(x, draw.randn(*shape), t)
    dropped = draw.dropped(labels, cfg.data.prompt_dropout)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    weight = native_loss_weight(s.teacher.prediction_type, alpha, sigma) * alpha ** 2  # MSE(a eps_hat, a eps)
    loss_lora = losses.denoising_loss(run.fake_score(x_t, t, **conditioner.cond(dropped)), x, weight)
    return loss_lora, {"loss_lora": loss_lora.item()}


def students(run: Run) -> list[Student]:
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=run.ts, ema=run.ema, name=NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: SwiftBrushConfig) -> list:
    """The teacher, the generator (a full copy) and the fake score, a LoRA on the teacher's own network. The
    generator update holds G's forward (the VSD predictions run under no_grad); the LoRA update, the fake score's."""
    from stepdistill.training.plan import LoRA, Pass, PlannedRole

    m, ckpt = cfg.model, cfg.model.gradient_checkpointing
    return [PlannedRole.teacher(),
            PlannedRole("generator", "copy", ema=bool(cfg.train.ema_decay), gradient_checkpointing=ckpt,
                        passes=(Pass("generator"),)),
            PlannedRole("fake_score", "lora", lora=LoRA(m.lora_rank, m.lora_alpha, tuple(m.lora_targets)),
                        gradient_checkpointing=ckpt, passes=(Pass("fake_score"),))]


def main(cfg: SwiftBrushConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], SwiftBrushConfig)
