"""BOOT: data-free distillation of a diffusion teacher by bootstrapping (Gu et al. 2023, arXiv:2306.05544).

    accelerate launch recipes/boot.py                                          # digits, 1 step, CPU minutes
    accelerate launch recipes/boot.py model.steps=4                            # a 4-step student
    accelerate launch recipes/boot.py --config recipes/configs/boot/tiny_t2i.yaml   # text-to-image smoke test
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/boot.py \
        --config recipes/configs/boot/sd15.yaml data.prompts=PROMPTS.txt

No official code exists; this follows the paper and `stepdistill.losses.boot`. No image is read. The student
learns the teacher's deterministic trajectory from noise through its *signal* y_t = (x_t - sigma_t eps) / alpha_t:
every step draws noise, conditions and a pair of neighbouring times s < t on a grid of `loss.levels` intervals, and
  1. takes the student's signal at t under no_grad (at the top of the trajectory, x = sigma_t eps: y = 0);
  2. evaluates the (guided) teacher at x_t = alpha_t y_t + sigma_t eps and takes one step of the signal ODE down to
     s (`losses.signal_step`: DDIM's step in signal space);
  3. regresses the student's signal at s onto that stop-gradient target (`losses.boot_loss`).

Steps (`model.steps` = K): the grid is cut into K segments at tau_0 = t_max > tau_1 > ... > tau_K = t_min, and the
student learns each segment's trajectory from its start x_tau (noise for the first; for the others, the state
the student's own earlier segments reach, so no data either: BOOT's bootstrapping, one segment after another).
Within segment k, eps = x_tau / sigma_tau and y_tau = 0 describe the same DDIM trajectory, and the student
network D(x_tau, .) gives the signal as

    y_t = (1 - rho_tau / rho_t) D(x_tau, tau_k + tau_{k+1} - t),      rho = alpha / sigma,

so that at the segment's end (t = tau_{k+1}) the network runs at tau_k and its output is the x0 whose DDIM jump
from x_tau lands on x_{tau_{k+1}}. That is a stock scheduler's step: the student samples with
`TCDScheduler(gamma=0)` (DDIM jumps) at tau_0..tau_{K-1}, one step a segment, and K = 1 is a one-step generator
fed sigma(t_max) z at t_max. The loss is taken on D's output (the target divided by 1 - rho_tau / rho_s), so
every pair weighs alike whatever its distance from the segment's start.

Where the paper is unclear (its exact discretisation and weights are not published as code):
  - the step is the exact exponential-integrator (DDIM) step, not Euler: on the coarse grids a CPU budget
    allows, the Euler step in lambda overshoots the teacher's trajectory at the grid's top, where lambda moves most;
  - the times are a uniform grid of `loss.levels` intervals in the teacher's timesteps, each interval drawn
    equally often, so a segment's start anchors one pair in `loss.levels / K`;
  - each pair weighs the same (above): a 1 / step^2 weight (the paper's derivative-matching form) would put the
    weight on the finest intervals, and Adam absorbs any global scale.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import torch

from stepdistill import losses
from stepdistill.guidance import guided
from stepdistill.roles import make_generator, make_real_score
from stepdistill.samplers import ddim_step
from stepdistill.schedules import VPDiscrete
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, DataConfig, Draw, LRSchedule, RecipeConfig, Setup, TrainConfig,
                                  check_optim, cli, make_optimizer, run_recipe, single_network_step, trainable_params)

NAME = "boot"


@dataclass
class ModelConfig:
    teacher: str = "digits"  # "digits", a local diffusers folder, or a hub id
    steps: int = 1  # K: the student's sampling steps, one segment of the trajectory each
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    # Intervals of the time grid from t_max down to t_min (the signal ODE's steps: the trajectory the student
    # learns is the teacher's DDIM path of this many steps), a multiple of model.steps.
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
                                                                   max_steps=2400, ema_decay=0.999,
                                                                   output_dir="outputs/boot_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))


@dataclass(kw_only=True)
class Run:
    cfg: BOOTConfig
    setup: Setup
    grid: torch.Tensor  # the time grid, descending from t_max to t_min (float64, CPU)
    teacher: torch.nn.Module  # the teacher's denoiser (x0 predictions), frozen
    generator: torch.nn.Module  # roles.Generator over D, fed sigma(t_max) z (prepared)
    opt: torch.optim.Optimizer
    sched: object
    ema: object


def check(cfg: BOOTConfig) -> None:
    """Bad input, before anything is built."""
    check_optim(cfg.optim, cfg.train.max_steps)
    if cfg.model.steps < 1:
        raise ValueError(f"model.steps={cfg.model.steps} must be >= 1")
    if cfg.loss.levels < 1 or cfg.loss.levels % cfg.model.steps:
        raise ValueError(f"loss.levels={cfg.loss.levels} must be a positive multiple of model.steps="
                         f"{cfg.model.steps} (each step a segment of the time grid)")
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


def coefficients(run: Run, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, sigma, rho = alpha / sigma) at times `t` (float64, CPU), as float32 on the run's device."""
    sched, device = run.setup.schedule, run.setup.device
    alpha, sigma = sched.alpha(t), sched.sigma(t)
    return alpha.float().to(device), sigma.float().to(device), (alpha / sigma).float().to(device)


def per_sample(x: torch.Tensor, ndim: int) -> torch.Tensor:
    return x.view(-1, *([1] * (ndim - 1)))


def segment_starts(run: Run) -> torch.Tensor:
    """tau_0..tau_K: the grid's times where the K segments start (and t_min, where the last ends)."""
    return run.grid[:: run.cfg.loss.levels // run.cfg.model.steps]


def network_time(starts: torch.Tensor, k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The time D is run at for the signal at t in segment k: tau_k + tau_{k+1} - t (tau_k at the segment's end)."""
    return starts[k] + starts[k + 1] - t


def segment_start(run: Run, generator, z: torch.Tensor, k: torch.Tensor, cond: dict) -> torch.Tensor:
    """x_tau_k for each sample: sigma(t_max) z, carried through segments 0..k-1 by the student's own DDIM jumps
    (how it samples), under no_grad."""
    starts = segment_starts(run)
    x = z * run.setup.unwrap(run.generator).input_scale
    for j in range(int(k.max()) if len(k) else 0):
        tau, nxt = starts[j].expand(len(z)), starts[j + 1].expand(len(z))
        jumped = ddim_step(None, run.setup.schedule, x, tau, nxt, x0=generator(x, tau.float().to(x.device), **cond))
        x = torch.where(per_sample(k.to(x.device) > j, x.dim()), jumped, x)
    return x


def bootstrap_loss(run: Run, draw: Draw) -> tuple[torch.Tensor, dict[str, float]]:
    """The student's signal at s against one signal-ODE step from its own (stop-gradient) signal at t with the
    teacher, for neighbouring grid times s < t in one segment, from that segment's start."""
    s, cfg = run.setup, run.cfg
    conditioner = s.conditioner
    labels = draw.labels(conditioner)
    z = draw.randn(*s.shape)
    i = draw.local(draw.sampled(lambda: torch.randint(0, cfg.loss.levels, (draw.batch,), generator=draw.g))).cpu()
    k = i // (cfg.loss.levels // cfg.model.steps)  # the segment
    starts = segment_starts(run)
    t, u = run.grid[i], run.grid[i + 1]  # the pair, t > u
    _, sigma_tau, rho_tau = coefficients(run, starts[k])
    alpha_t, sigma_t, rho_t = coefficients(run, t)
    _, _, rho_u = coefficients(run, u)
    cond = conditioner.cond(labels)
    dims = z.dim()
    generator = s.unwrap(run.generator)
    with torch.no_grad():
        x_tau = segment_start(run, generator, z, k, cond)
        eps = x_tau / per_sample(sigma_tau, dims)
        # 0 at the segment's start (t = tau: x_tau = sigma_tau eps), by its factor
        y_t = per_sample(1 - rho_tau / rho_t, dims) * generator(x_tau, network_time(starts, k, t).float().to(s.device),
                                                                **cond)
        x_t = per_sample(alpha_t, dims) * y_t + per_sample(sigma_t, dims) * eps
        x0 = guided(run.teacher, cfg.loss.guidance, conditioner, labels)(x_t, t.float().to(s.device))
        target = losses.signal_step(y_t, x0, rho_t, rho_u) / per_sample(1 - rho_tau / rho_u, dims)
    loss = losses.boot_loss(run.generator(x_tau, network_time(starts, k, u).float().to(s.device), **cond), target)
    return loss, {"loss": loss.item()}


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """One update on the step's micro-batches, then the EMA (`single_network_step`)."""
    return single_network_step(draw, lambda view: bootstrap_loss(run, view), run.setup.accelerator, run.generator,
                               run.opt, run.sched, grad_clip=run.cfg.optim.grad_clip, ema=run.ema)


def students(run: Run) -> list[Student]:
    """K steps: D at each segment's start, DDIM jumps between them (TCD's gamma = 0); one step: D(sigma(t_max) z,
    t_max)."""
    k = run.cfg.model.steps
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=segment_starts(run)[:-1], ema=run.ema,
                               name=NAME, gamma=0.0 if k > 1 else None)]


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
