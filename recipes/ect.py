"""Consistency training: ECT, Easy Consistency Tuning (Geng et al. 2024, arXiv:2406.14548), from the teacher's
weights; iCT, improved consistency training (Song & Dhariwal 2023, arXiv:2310.14189), from scratch.

    accelerate launch recipes/ect.py                                                   # ECT on digits
    accelerate launch recipes/ect.py --config recipes/configs/ect/digits_ict.yaml      # iCT from scratch
    accelerate launch --multi_gpu --num_processes 2 recipes/ect.py train.max_steps=20

No teacher solver: the consistency pair is one real image x noised twice with the *same* noise eps, at a
level t and a smaller level r (VE units, sigma = sigma_t / alpha_t, so any schedule works), and the network at
(x + t eps, t) regresses its own stop-gradient output at (x + r eps, r), or x itself where r reaches the
boundary. The target pass replays the online pass's dropout masks (`networks.replayed_rng`); there is no EMA
target (theta^- = sg(theta)).
  - ECT (official `locuslab/ect` `training/loss.py::ECMLoss`): the student starts as the teacher (diffusion
    pre-training is consistency training at dt -> 0); t ~ LogNormal(-1.1, 2.0), r = `curricula.ect_r(t, stage)`,
    dt shrinking by q per stage; loss sqrt(|d|^2 + c^2) - c (c = 0: the L2 norm) weighted 1 / (t - r).
  - iCT: a network of the teacher's architecture from random weights; N(k) Karras levels doubling from 10 to
    1280 (`curricula.ict_levels`), the pair index drawn from iCT's discretised lognormal (`ICTPairs`);
    pseudo-Huber c = 0.00054 sqrt(d) weighted 1 / (sigma_{i+1} - sigma_i).
The consistency function is the network's own x0 ("none": exact at sigma = 0, ECT's EDM preconditioning),
LCM's scalings ("lcm", exact at t = 0 of a VP-discrete teacher) or CM's ("cm", exact at sigma_min).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from stepdistill import losses
from stepdistill.curricula import ICTPairs, ect_r, ict_levels
from stepdistill.consistency import ConsistencyDenoiser
from stepdistill.networks import replayed_rng, rng_state, set_dropout
from stepdistill.roles import Generator, make_generator
from stepdistill.schedules import VPDiscrete, time_grid
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, RecipeConfig, DataConfig, Draw, EvalConfig, LRSchedule, Setup,
                                  TrainConfig, check_optim, cli, make_optimizer, run_recipe, single_network_step,
                                  trainable_params)

NAME = "ect"


@dataclass
class ModelConfig:
    teacher: str = "digits"  # the weights ECT starts from; iCT uses only its architecture and schedule
    init: Literal["teacher", "scratch"] = "teacher"  # scratch: random weights (iCT)
    boundary: Literal["none", "lcm", "cm"] = "none"
    sigma_min: Optional[float] = None  # the boundary level (VE); None: the schedule's lowest level
    dropout: Optional[float] = None  # the student's dropout (ECT CIFAR: 0.2, iCT: 0.3); None: the network's
    sampling_levels: int = 8  # Karras levels the student samples; K steps take every (levels / K)-th
    inference_steps: int = 2  # default sampling steps (export, sample grids)


@dataclass
class LossConfig:
    schedule: Literal["ect", "ict"] = "ect"
    p_mean: float = -1.1  # the lognormal of t (ECT) or of the pair index (iCT)
    p_std: float = 2.0
    stages: int = 8  # ECT: dt shrinks by q at each of these equal stages of the run
    q: float = 2.0
    k: float = 8.0
    b: float = 1.0
    s0: int = 10  # iCT: levels at the start and the end of the doubling curriculum
    s1: int = 1280
    huber_c: Optional[float] = 0.0  # ECT: 0 (the L2 norm); None: iCT's 0.00054 sqrt(d)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: Optional[float] = None
    lr_schedule: LRSchedule = "constant"


@dataclass
class ECTConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=3000, ema_decay=0.999,
                                                                   output_dir="outputs/ect_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(student_steps=(1, 2, 4, 8)))


@dataclass(kw_only=True)
class Run:
    cfg: ECTConfig
    setup: Setup
    sigma_min: float  # the boundary level, VE units
    sigma_max: float
    generator: torch.nn.Module  # roles.Generator over the consistency function (prepared)
    opt: torch.optim.Optimizer
    sched: object
    ema: object


def check(cfg: ECTConfig, s: Setup) -> None:
    m, lo = cfg.model, cfg.loss
    check_optim(cfg.optim, cfg.train.max_steps)
    if m.boundary == "lcm" and not isinstance(s.schedule, VPDiscrete):
        raise ValueError("model.boundary=lcm scales integer timesteps of a VP-discrete teacher; use none or cm")
    if m.dropout is not None and not 0 <= m.dropout < 1:
        raise ValueError(f"model.dropout={m.dropout} must lie in [0, 1) (or null: the network's own)")
    if lo.p_std <= 0:
        raise ValueError(f"loss.p_std={lo.p_std} must be > 0")
    if lo.stages < 1 or lo.q <= 1:
        raise ValueError(f"loss.stages={lo.stages} must be >= 1 and loss.q={lo.q} > 1")
    if not 1 <= lo.s0 <= lo.s1:
        raise ValueError(f"loss.s0={lo.s0}, loss.s1={lo.s1}: need 1 <= s0 <= s1")
    if lo.huber_c is not None and lo.huber_c < 0:
        raise ValueError(f"loss.huber_c={lo.huber_c} must be >= 0 (or null: iCT's 0.00054 sqrt(d))")
    if not 1 <= m.inference_steps <= m.sampling_levels:
        raise ValueError(f"model.inference_steps={m.inference_steps} must lie in [1, model.sampling_levels="
                         f"{m.sampling_levels}]")


def make_student(cfg: ECTConfig, s: Setup, sigma_min: float) -> Generator:
    """The teacher's network (ECT) or its architecture from fresh weights (iCT), as a consistency function."""
    gen = make_generator(s.teacher, float(s.schedule.t_max))
    if cfg.model.init == "scratch":
        net = gen.denoiser.net
        fresh = type(net).from_config(net.config)  # diffusers' own initialisation of that architecture
        net.load_state_dict(fresh.state_dict())
    set_dropout(gen.denoiser.net, cfg.model.dropout)
    if cfg.model.boundary != "none":
        gen.denoiser = ConsistencyDenoiser(gen.denoiser, cfg.model.boundary, sigma_min=sigma_min)
    return gen


def setup(cfg: ECTConfig) -> Run:
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data, need_images=True)
    check(cfg, s)
    t_min = torch.tensor(s.schedule.t_min, dtype=torch.float64)
    lowest = float(s.schedule.ratio(t_min))
    sigma_min = lowest if cfg.model.sigma_min is None else cfg.model.sigma_min
    if sigma_min < lowest:
        raise ValueError(f"model.sigma_min={sigma_min} lies below the teacher's lowest level {lowest:.4g}")
    t_max = torch.tensor(s.schedule.t_max, dtype=torch.float64)
    sigma_max = min(float(s.schedule.ratio(t_max)), 80.0) if float(s.schedule.alpha(t_max)) > 0 else 80.0
    generator = make_student(cfg, s, sigma_min)
    params = trainable_params(generator)
    o = cfg.optim
    opt, sched = make_optimizer(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                warmup_steps=o.warmup_steps, schedule=o.lr_schedule, total_steps=s.horizon)
    generator, opt, sched = s.prepare(generator, opt, sched)
    ema = s.ema_of(generator, cfg.train.ema_decay)
    return Run(cfg=cfg, setup=s, sigma_min=sigma_min, sigma_max=sigma_max, generator=generator, opt=opt,
               sched=sched, ema=ema)


def levels(run: Run, draw: Draw, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, r, weight) in VE units for the global batch's slice: r = 0 where the pair reaches the boundary."""
    lo, total = run.cfg.loss, run.setup.horizon.total
    if lo.schedule == "ict":
        n = ict_levels(step, total, s0=lo.s0, s1=lo.s1)
        pairs = ICTPairs(sigma_min=run.sigma_min, sigma_max=run.sigma_max, p_mean=lo.p_mean, p_std=lo.p_std)
        r, t = (draw.local(v) for v in draw.sampled(lambda: pairs.sample(n, draw.batch, generator=draw.g)))
        weight = losses.ict_weight(r, t)
        r = torch.where(r <= run.sigma_min, torch.zeros_like(r), r)
        return t, r, weight
    t = torch.exp(lo.p_mean + lo.p_std * draw.randn()).clamp(run.sigma_min * 1.0001, run.sigma_max)
    stage = min(step * lo.stages // max(total, 1), lo.stages - 1)
    r = ect_r(t, stage, q=lo.q, k=lo.k, b=lo.b)
    r = torch.where(r <= run.sigma_min, torch.zeros_like(r), r)
    return t, r, losses.ect_weight(t, r)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """One update on the step's micro-batches, then the EMA (`single_network_step`)."""
    return single_network_step(draw, lambda view: ect_loss(run, view, step), run.setup.accelerator, run.generator,
                               run.opt, run.sched, grad_clip=run.cfg.optim.grad_clip, ema=run.ema)


def ect_loss(run: Run, draw: Draw, step: int) -> tuple[torch.Tensor, dict[str, float]]:
    cfg, s = run.cfg, run.setup
    images, labels = draw.real(s.real)
    labels = labels if labels is not None else draw.labels(s.conditioner)
    x = s.space.encode(images)
    eps = draw.randn(*s.shape)
    sigma_t, sigma_r, weight = levels(run, draw, step)
    clean = sigma_r == 0
    t = s.schedule.t_from_ratio(sigma_t.double()).float()
    r = s.schedule.t_from_ratio(torch.where(clean, sigma_t, sigma_r).double()).float()  # r unused where clean
    cond = s.conditioner.cond(labels)
    state = rng_state(s.device)
    online = run.generator(s.schedule.add_noise(x, eps, t), t, **cond)
    with torch.no_grad(), replayed_rng(state, s.device):  # theta^- = sg(theta), the online pass's dropout
        target = s.unwrap(run.generator)(s.schedule.add_noise(x, eps, r), r, **cond)
    target = torch.where(clean.view(-1, *([1] * len(s.shape))), x, target)
    c = 0.00054 * x[0].numel() ** 0.5 if cfg.loss.huber_c is None else cfg.loss.huber_c
    loss = losses.pseudo_huber_loss(online, target, c, weight.to(s.device))
    return loss, {"loss": loss.item(), "t_over_r": float((sigma_t / sigma_r.clamp_min(1e-12)).median())}


def sampling_times(run: Run) -> torch.Tensor:
    """The student's `model.sampling_levels` Karras times, descending from t_max (integers on VP-discrete
    teachers: the exported pipeline's timesteps)."""
    ts = time_grid(run.setup.schedule, run.cfg.model.sampling_levels, "karras")[:-1]
    if isinstance(run.setup.schedule, VPDiscrete):
        ts = ts.round()
    return ts


def students(run: Run) -> list[Student]:
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=sampling_times(run), ema=run.ema,
                               name=NAME, steps=run.cfg.model.inference_steps)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: ECTConfig) -> list:
    """The teacher (held, not called after the student is made) and the student, a full copy (iCT: fresh weights
    of the same architecture); the target pass runs under no_grad."""
    from stepdistill.training.plan import Pass, PlannedRole

    return [PlannedRole.teacher(),
            PlannedRole("generator", "copy", ema=bool(cfg.train.ema_decay), passes=(Pass("generator"),))]


def main(cfg: ECTConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], ECTConfig)
