"""BOOT: data-free distillation of a diffusion teacher by bootstrapping (Gu et al. 2023, arXiv:2306.05544).

    accelerate launch recipes/boot.py                                          # digits, 1 step, CPU minutes
    accelerate launch recipes/boot.py --config recipes/configs/boot/tiny_t2i.yaml   # text-to-image smoke test
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/boot.py \
        --config recipes/configs/boot/sd15.yaml data.prompts=PROMPTS.txt

No official code exists; this follows the paper and `stepdistill.losses.boot`. No image is read: every step
draws noise eps, conditions and a pair of neighbouring times s < t on a grid, and
  1. runs the student at t under no_grad: y_t = g(eps, t) (at the grid's top, t = t_max, the trajectory's start:
     x = sigma_t eps, y = 0);
  2. evaluates the (guided) teacher there, at x_t = alpha_t y_t + sigma_t eps, and takes one step of the signal
     ODE down to s (`losses.signal_step`, DDIM's step in signal space);
  3. regresses g(eps, s) onto that stop-gradient target (`losses.boot_loss`).
So the student learns the teacher's deterministic trajectory from noise, from its start downwards, without EMA
target or data. g is a copy of the teacher called on sigma(t_max) eps at time t, its x0 output read as the signal;
the student samples g(eps, t_min) in one step (a stock scheduler's one step at t_min from sigma(t_max) z).

Where the paper is unclear (its exact discretisation and weights are not published as code):
  - the step is the exact exponential-integrator (DDIM) step, not Euler: on the coarse grids a CPU budget
    allows, the Euler step in lambda overshoots the teacher's trajectory at the grid's top, where lambda moves most;
  - the times are a uniform grid of `loss.levels` intervals in the teacher's timesteps, each interval drawn
    equally often, so the start (pure noise) anchors one pair in `loss.levels`;
  - each pair weighs the same: a 1 / step^2 weight (the paper's derivative-matching form) would put the weight on
    the finest intervals, which the student's error there does not call for, and Adam absorbs any global scale.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from stepdistill import losses
from stepdistill.guidance import guided
from stepdistill.roles import make_generator, make_real_score
from stepdistill.schedules import VPDiscrete
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, DataConfig, Draw, LRSchedule, RecipeConfig, Setup, TrainConfig,
                                  accumulate, check_optim, cli, make_optimizer, run_recipe, trainable_params, update)

NAME = "boot"


@dataclass
class ModelConfig:
    teacher: str = "digits"  # "digits", a local diffusers folder, or a hub id
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    # Intervals of the time grid from t_max down to t_min (the signal ODE's steps: the trajectory the student
    # learns is the teacher's DDIM path of this many steps).
    levels: int = 32
    guidance: float = 1.0  # the teacher's classifier-free guidance scale: the student learns the guided trajectory


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: Optional[float] = 1.0
    lr_schedule: LRSchedule = "cosine"


@dataclass
class BOOTConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=1500, ema_decay=0.999,
                                                                   output_dir="outputs/boot_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))


@dataclass(kw_only=True)
class Run:
    cfg: BOOTConfig
    setup: Setup
    grid: torch.Tensor  # the time grid, descending from t_max to t_min (float64, CPU)
    teacher: torch.nn.Module  # the teacher's denoiser (x0 predictions), frozen
    generator: torch.nn.Module  # roles.Generator: g(eps, t) = D(sigma(t_max) eps, t) (prepared)
    opt: torch.optim.Optimizer
    sched: object
    ema: object


def check(cfg: BOOTConfig) -> None:
    """Bad input, before anything is built."""
    check_optim(cfg.optim, cfg.train.max_steps)
    if cfg.loss.levels < 1:
        raise ValueError(f"loss.levels={cfg.loss.levels} must be >= 1 (intervals of the time grid)")
    if not cfg.loss.guidance >= 1.0:
        raise ValueError(f"loss.guidance={cfg.loss.guidance} must be >= 1 (1: the teacher unguided)")
    given = [k for k in ("images", "dataset", "shards", "precomputed") if getattr(cfg.data, k) is not None]
    if given:
        raise ValueError(f"boot is data-free: it reads no images; unset {', '.join('data.' + k for k in given)} "
                         "(text-to-image teachers take their prompts from data.prompts)")


def setup(cfg: BOOTConfig) -> Run:
    check(cfg)
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data)
    if cfg.loss.guidance != 1.0 and s.conditioner.uncond(torch.zeros(1, dtype=torch.long)) is None:
        raise ValueError("loss.guidance != 1 needs a conditional teacher with an unconditional branch")
    schedule = s.schedule
    grid = torch.linspace(schedule.t_max, schedule.t_min, cfg.loss.levels + 1, dtype=torch.float64)
    if isinstance(schedule, VPDiscrete):  # its integer timesteps (the exported scheduler's)
        grid = grid.round()
        if len(torch.unique(grid)) != len(grid):
            raise ValueError(f"loss.levels={cfg.loss.levels} exceeds the teacher's "
                             f"{int(schedule.t_max - schedule.t_min)} timesteps")
    ckpt = cfg.model.gradient_checkpointing
    generator = make_generator(s.teacher, float(schedule.t_max), gradient_checkpointing=ckpt)
    s.shard(generator)
    o = cfg.optim
    opt, sched = make_optimizer(trainable_params(generator), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                warmup_steps=o.warmup_steps, schedule=o.lr_schedule, total_steps=s.horizon,
                                name="generator")
    generator, opt, sched = s.prepare(generator, opt, sched)
    return Run(cfg=cfg, setup=s, grid=grid, teacher=make_real_score(s.teacher, gradient_checkpointing=ckpt),
               generator=generator, opt=opt, sched=sched, ema=s.ema_of(generator, cfg.train.ema_decay))


def signal(run: Run, generator: torch.nn.Module, eps: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
    """g(eps, t): the student's signal at t of the trajectory from eps."""
    return generator(eps * generator_input_scale(run), t, **cond)


def generator_input_scale(run: Run) -> float:
    return run.setup.unwrap(run.generator).input_scale


def float_on(x: torch.Tensor, device) -> torch.Tensor:
    return x.float().to(device)


def bootstrap_loss(run: Run, draw: Draw) -> tuple[torch.Tensor, dict[str, float]]:
    """g(eps, s) against one signal-ODE step from sg(g(eps, t)) with the teacher, for neighbouring grid times."""
    s, cfg = run.setup, run.cfg
    schedule, conditioner = s.schedule, s.conditioner
    labels = draw.labels(conditioner)
    eps = draw.randn(*s.shape)
    i = draw.local(draw.sampled(lambda: torch.randint(0, cfg.loss.levels, (draw.batch,), generator=draw.g))).cpu()
    t64, s64 = run.grid[i], run.grid[i + 1]
    t, t_s = t64.float().to(s.device), s64.float().to(s.device)
    alpha_t, sigma_t = float_on(schedule.alpha(t64), s.device), float_on(schedule.sigma(t64), s.device)
    rho_t, rho_s = (float_on(schedule.alpha(u) / schedule.sigma(u), s.device) for u in (t64, s64))
    cond = conditioner.cond(labels)
    view = (-1,) + (1,) * len(s.shape)
    with torch.no_grad():
        y_t = signal(run, s.unwrap(run.generator), eps, t, cond)
        y_t = torch.where((i == 0).to(s.device).view(view), torch.zeros_like(y_t), y_t)  # the start: x = sigma eps
        x_t = alpha_t.view(view) * y_t + sigma_t.view(view) * eps
        x0 = guided(run.teacher, cfg.loss.guidance, conditioner, labels)(x_t, t)
        target = losses.signal_step(y_t, x0, rho_t, rho_s)
    loss = losses.boot_loss(signal(run, run.generator, eps, t_s, cond), target)
    return loss, {"loss": loss.item()}


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """One update on the step's micro-batches (`accumulate`), then the EMA."""
    logs, _ = accumulate(draw, lambda view: bootstrap_loss(run, view))
    params = trainable_params(run.generator)
    update(run.setup.accelerator, params, run.opt, run.sched, grad_clip=run.cfg.optim.grad_clip)
    if run.ema is not None:
        run.ema.step(params)
    return logs


def students(run: Run) -> list[Student]:
    """One step: g(z, t_min), from sigma(t_max) z (the generator's input scale) at the grid's last time."""
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=run.grid[-1:], ema=run.ema, name=NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: BOOTConfig) -> list:
    """The teacher (one guided pass under no_grad) and the student, a full copy: one pass with its graph, one
    without."""
    from stepdistill.training.plan import Pass, PlannedRole

    ckpt = cfg.model.gradient_checkpointing
    return [PlannedRole.teacher(gradient_checkpointing=ckpt),
            PlannedRole("generator", "copy", ema=bool(cfg.train.ema_decay), gradient_checkpointing=ckpt,
                        passes=(Pass("generator"),))]


def main(cfg: BOOTConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], BOOTConfig)
