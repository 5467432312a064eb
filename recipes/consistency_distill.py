"""Consistency distillation: LCM-style (Luo et al. 2023, arXiv:2310.04378), LCM-LoRA (arXiv:2311.05556) and
MLCM multistep segments (Xie et al. 2024, arXiv:2406.05768), one student sampled at 1, 2, 4 or 8 steps.

    accelerate launch recipes/consistency_distill.py                                  # digits, CPU minutes
    accelerate launch recipes/consistency_distill.py --config recipes/configs/consistency_distill/digits_mlcm.yaml
    accelerate launch recipes/consistency_distill.py --config recipes/configs/consistency_distill/tiny_t2i.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/consistency_distill.py \
        --config recipes/configs/consistency_distill/sd15_lora.yaml data.prompts=PROMPTS.txt

Algorithm (diffusers `train_lcm_distill_*.py`, the official LCM training code): a skip grid of the teacher's
levels (`curricula.skip_grid`: {0, 19, 39, ..., 999} on 1,000-step VP teachers; Karras levels on EDM ones).
Each step draws a level i + 1 and a state x at it (a real image noised there, or a state of the teacher's
own sampling trajectory, `data.trajectories`), then
  1. the teacher takes one solver step from grid[i + 1] to grid[i] (DDIM; Heun on EDM teachers) with LCM's
     guidance x0 = x0_c + w (x0_c - x0_u), w drawn from [w_min, w_max] (and fed to a w-conditioned student);
  2. the target is the target network's consistency function at (x_prev, grid[i]): an EMA of the student
     (decay 0.95), or for an LCM-LoRA the student itself under no_grad (one network in memory: adapters off
     is the teacher); at the boundary (grid[0], or a segment's lower edge) the target is x_prev itself;
  3. the student's consistency function at (x, grid[i + 1]) regresses the target (L2, LCM's element-wise
     Huber, or iCT's per-sample pseudo-Huber).
The consistency function: c_skip x + c_out x0_hat with LCM's boundary scalings ("lcm", timestep scaling 10)
or the official CM scalings ("cm", sigma_min shift); with `loss.segments` > 1 (MLCM / phased), a DDIM jump on
the student's x0 to its segment's lower edge, several entries training towards fewer segments stage by stage.
The student samples any K of its grid's levels (`Student.steps`, LCMScheduler's `num_inference_steps`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from stepdistill import losses
from stepdistill.adapters import add_lora, copy_lora, ema_lora
from stepdistill.curricula import segment_edges, skip_grid
from stepdistill.data.trajectories import Trajectories, make_trajectories
from stepdistill.denoiser import Denoiser
from stepdistill.guidance import CFGDenoiser, guided, lcm_guidance_to_cfg
from stepdistill.consistency import ConsistencyDenoiser, GuidanceConditioned, SegmentConsistencyDenoiser
from stepdistill.networks import ema_update, make_target, set_gradient_checkpointing
from stepdistill.roles import Generator, make_generator, make_real_score
from stepdistill.samplers import ddim_step, heun_step
from stepdistill.schedules import VPDiscrete
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, RecipeConfig, DataConfig, Draw, EvalConfig, LRSchedule, Setup,
                                  TrainConfig, accumulate, check_optim, cli, make_optimizer, run_recipe,
                                  trainable_params, update)

NAME = "consistency_distill"

# LCM-LoRA's target modules (diffusers `train_lcm_distill_lora_sd*.py`): attention, feed-forward, the
# residual blocks' convolutions and time projections, the resamplers.
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                    "conv1", "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")


@dataclass
class ModelConfig:
    teacher: str = "digits"  # "digits", "digits-edm", a local diffusers folder, or a hub id
    boundary: Literal["lcm", "cm"] = "lcm"  # LCM's scalings at the network timestep, or CM's at sigma / alpha
    timestep_scaling: float = 10.0  # LCM's
    sigma_min: float = 0.002  # CM's boundary level (VE units)
    lora_rank: Optional[int] = None  # LCM-LoRA: the student is a LoRA on the teacher (official: 64)
    lora_alpha: Optional[float] = None  # None: = rank
    lora_targets: tuple[str, ...] = LCM_LORA_TARGETS
    # w-conditioning: the student UNet gains `time_cond_proj_dim` (LCM: 256) and takes the embedding of w;
    # text-to-image (UNet2DConditionModel) students only.
    guidance_embedding_dim: Optional[int] = None
    inference_steps: int = 4  # the default sampling steps (export, sample grids); any count works at inference
    # Between steps: null re-noises x0 (LCM, LCMScheduler); a value samples with TCD's gamma (TCDScheduler's
    # eta), 0 being a deterministic DDIM jump on the student's x0, what an MLCM segment student is trained for.
    gamma: Optional[float] = None
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    levels: int = 50  # skip-grid levels (LCM's num_ddim_timesteps: k = 1000 / 50 = 20)
    solver: Literal["ddim", "heun"] = "ddim"  # the teacher's step (official CD on EDM: Heun)
    # Where the teacher's step to t = 0 (the boundary pair) lands (`schedules.NoiseSchedule.zero`): clean data, or
    # the lowest training level alphas_cumprod[0], as LCM's DDIMSolver does (VP-discrete teachers; docs/parity.md)
    solver_zero: Literal["clean", "lowest_level"] = "clean"
    w_min: float = 0.0  # LCM's guidance w = CFG scale - 1, drawn per sample from [w_min, w_max]
    w_max: float = 0.0  # (LCM on SD: 5-15; LCM-LoRA: a fixed 7.5 - 1; digits: 0, the teacher as trained)
    metric: Literal["l2", "huber", "pseudo_huber"] = "l2"  # LCM's l2 | element-wise huber | iCT's per-sample
    huber_c: Optional[float] = None  # None: LCM's 0.001 (huber), iCT's 0.00054 sqrt(d) (pseudo_huber)
    # EMA of the student (a LoRA student: an EMA copy of its adapter), or the student itself under no_grad
    target: Literal["ema", "online"] = "ema"
    target_decay: float = 0.95  # LCM's ema_decay
    # MLCM: segments per training stage (equal stages); (1,) is single-segment consistency distillation.
    segments: tuple[int, ...] = (1,)
    states: Literal["real", "teacher"] = "real"  # real images noised to the level, or teacher-trajectory states
    trajectories: int = 4096  # with states=teacher: trajectories solved once before training (cached)


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0  # LCM: 1e-2 (full UNets on SD)
    warmup_steps: int = 100
    grad_clip: float = 1.0
    lr_schedule: LRSchedule = "cosine"


@dataclass
class ConsistencyDistillConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=2000,
                                                                   output_dir="outputs/consistency_distill_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(student_steps=(1, 2, 4, 8)))


@dataclass(kw_only=True)
class Run:
    cfg: ConsistencyDistillConfig
    setup: Setup
    grid: torch.Tensor  # skip grid, ascending, the boundary first (float64, native times)
    teacher: Denoiser  # adapters off where the student is a LoRA on the same network
    generator: torch.nn.Module  # roles.Generator over the student's consistency function (prepared)
    target: Optional[torch.nn.Module]  # the EMA target Generator, or None (the student under no_grad)
    opt: torch.optim.Optimizer
    sched: object
    ema: object
    trajectories: Optional[Trajectories]


def check(cfg: ConsistencyDistillConfig, s: Setup) -> None:
    """Every value the run depends on, with its key, before anything trains."""
    m, lo = cfg.model, cfg.loss
    check_optim(cfg.optim, cfg.train.max_steps)
    if not 0 <= lo.w_min <= lo.w_max:
        raise ValueError(f"loss.w_min={lo.w_min}, loss.w_max={lo.w_max}: need 0 <= w_min <= w_max")
    if lo.w_max > 0 and s.conditioner.uncond(torch.zeros(1, dtype=torch.long)) is None:
        raise ValueError("loss.w_max > 0 (guidance) needs a teacher with an unconditional branch")
    if not 0 <= lo.target_decay < 1:
        raise ValueError(f"loss.target_decay={lo.target_decay} must lie in [0, 1)")
    if lo.huber_c is not None and lo.huber_c <= 0:
        raise ValueError(f"loss.huber_c={lo.huber_c} must be > 0 (or null: the method's default)")
    if not lo.segments or any(k < 1 for k in lo.segments) or list(lo.segments) != sorted(lo.segments, reverse=True):
        raise ValueError(f"loss.segments={list(lo.segments)}: positive counts, non-increasing (training goes "
                         "towards fewer segments)")
    if max(lo.segments) > 1 and not isinstance(s.schedule, VPDiscrete):
        raise ValueError("loss.segments > 1 (MLCM) needs a VP-discrete teacher: its segments end at t = 0")
    if m.boundary == "lcm" and not isinstance(s.schedule, VPDiscrete):
        raise ValueError("model.boundary=lcm scales integer timesteps of a VP-discrete teacher; use "
                         "model.boundary=cm for this teacher")
    if lo.solver_zero == "lowest_level" and not isinstance(s.schedule, VPDiscrete):
        raise ValueError("loss.solver_zero=lowest_level is a VP-discrete teacher's alphas_cumprod[0]; this teacher's "
                         "t = 0 is clean data")
    if lo.solver == "heun" and isinstance(s.schedule, VPDiscrete):
        raise ValueError("loss.solver=heun is the EDM teachers' step; VP-discrete teachers take DDIM steps")
    if lo.states == "teacher" and lo.w_min != lo.w_max:
        raise ValueError("loss.states=teacher solves the trajectories once, at one guidance: set "
                         "loss.w_min = loss.w_max")
    if lo.states == "teacher" and lo.trajectories < 1:
        raise ValueError(f"loss.trajectories={lo.trajectories} must be >= 1")
    if lo.states == "real" and s.real is None:
        raise ValueError("loss.states=real needs real images (data.images, data.dataset or data.shards); or "
                         "train on the teacher's own trajectories with loss.states=teacher")
    if m.guidance_embedding_dim is not None:
        if m.lora_rank is not None:
            raise ValueError("model.guidance_embedding_dim with model.lora_rank: an LCM-LoRA distils one "
                             "guidance scale (w_min = w_max) and keeps the base UNet's inputs")
        if "time_cond_proj_dim" not in s.teacher.net.config:
            raise ValueError(f"model.guidance_embedding_dim: {type(s.teacher.net).__name__} has no "
                             "time_cond_proj_dim (w-conditioning needs a UNet2DConditionModel)")
    if m.lora_rank is not None and m.lora_rank < 1:
        raise ValueError(f"model.lora_rank={m.lora_rank} must be >= 1 (or null: a full student)")
    if m.gamma is not None and not 0 <= m.gamma <= 1:
        raise ValueError(f"model.gamma={m.gamma} must lie in [0, 1] (or null: LCM's re-noising)")
    if m.inference_steps < 1 or m.inference_steps > lo.levels:
        raise ValueError(f"model.inference_steps={m.inference_steps} must lie in [1, loss.levels={lo.levels}]")


def consistency_function(cfg: ConsistencyDistillConfig, denoiser: Denoiser) -> torch.nn.Module:
    """What the student network computes: x0 (segments: the recipe jumps to the edge) or the boundary-
    scaled consistency function, wrapped for w-conditioning."""
    m = cfg.model
    f = denoiser
    if max(cfg.loss.segments) == 1:
        f = ConsistencyDenoiser(denoiser, m.boundary, sigma_min=m.sigma_min, timestep_scaling=m.timestep_scaling)
    if m.guidance_embedding_dim is not None:
        f = GuidanceConditioned(f, m.guidance_embedding_dim, w=cfg.loss.w_min)
    return f


def make_student(cfg: ConsistencyDistillConfig, s: Setup) -> Generator:
    """The student: a LoRA on the teacher's own network (LCM-LoRA), a copy of the teacher, or a copy with
    `time_cond_proj_dim` (w-conditioning: the teacher's weights load; the new projection starts at zero
    output, so the student starts as the teacher)."""
    teacher, m = s.teacher, cfg.model
    t_max = float(s.schedule.t_max)
    if m.lora_rank is not None:
        add_lora(teacher.net, "student", rank=m.lora_rank, alpha=m.lora_alpha, target_modules=list(m.lora_targets))
        set_gradient_checkpointing(teacher.net, m.gradient_checkpointing)
        return Generator(consistency_function(cfg, teacher.denoiser(adapter="student")), t_max)
    if m.guidance_embedding_dim is not None:
        net = type(teacher.net).from_config({**teacher.net.config, "time_cond_proj_dim": m.guidance_embedding_dim})
        missing, unexpected = net.load_state_dict(teacher.net.state_dict(), strict=False)
        assert not unexpected and all(k.startswith("time_embedding.cond_proj") for k in missing), missing
        torch.nn.init.zeros_(net.time_embedding.cond_proj.weight)
        net.train().requires_grad_(True)
        set_gradient_checkpointing(net, m.gradient_checkpointing)
        return Generator(consistency_function(cfg, teacher.denoiser(net=net)), t_max)
    gen = make_generator(teacher, t_max, gradient_checkpointing=m.gradient_checkpointing)
    gen.denoiser = consistency_function(cfg, gen.denoiser)
    return gen


def make_target_of(cfg: ConsistencyDistillConfig, s: Setup, generator: Generator) -> Optional[torch.nn.Module]:
    """The target network (`loss.target=ema`): a frozen copy of the student, or, for a LoRA student, a frozen copy
    of its adapter on the same network ("student_target"); None for the online target (the student, no_grad)."""
    if cfg.loss.target == "online":
        return None
    if cfg.model.lora_rank is None:
        return make_target(generator)
    copy_lora(s.teacher.net, "student", "student_target")
    return Generator(consistency_function(cfg, s.teacher.denoiser(adapter="student_target")), float(s.schedule.t_max))


def update_target(run: "Run") -> None:
    """theta^- <- mu theta^- + (1 - mu) theta, on the student's copy or on its LoRA adapter."""
    mu = run.cfg.loss.target_decay
    if run.cfg.model.lora_rank is not None:
        ema_lora(run.setup.teacher.net, "student_target", "student", mu)
    else:
        ema_update(run.target, run.setup.unwrap(run.generator), mu)


def setup(cfg: ConsistencyDistillConfig) -> Run:
    """Validate, build the student, its target, the optimiser, and (states=teacher) the trajectories."""
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data,
                    need_images=cfg.loss.states == "real")
    check(cfg, s)
    try:
        grid = skip_grid(s.schedule, cfg.loss.levels)
    except ValueError as e:  # name the key at fault
        raise ValueError(f"loss.levels={cfg.loss.levels}: {e}") from None
    teacher = make_real_score(s.teacher)
    generator = make_student(cfg, s)
    target = make_target_of(cfg, s, generator)
    params = trainable_params(generator)
    o = cfg.optim
    opt, sched = make_optimizer(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay,
                                warmup_steps=o.warmup_steps, schedule=o.lr_schedule, total_steps=s.horizon)
    generator, opt, sched = s.prepare(generator, opt, sched)
    if target is not None and cfg.model.lora_rank is None:  # a LoRA target lives in the checkpointed network
        s.accelerator.register_for_checkpointing(target)
    ema = s.ema_of(generator, cfg.train.ema_decay)
    trajectories = None
    if cfg.loss.states == "teacher":
        solved_at = CFGDenoiser(teacher, lcm_guidance_to_cfg(cfg.loss.w_min))
        trajectories = make_trajectories(solved_at, solver(cfg), solver_schedule(cfg, s), s.conditioner, s.shape,
                                         grid, n=cfg.loss.trajectories, seed=cfg.train.seed, accelerator=s.accelerator,
                                         cache=s.cache("trajectories"), identity=s.identity)
    return Run(cfg=cfg, setup=s, grid=grid, teacher=teacher, generator=generator, target=target, opt=opt,
               sched=sched, ema=ema, trajectories=trajectories)


def solver(cfg: ConsistencyDistillConfig):
    return heun_step if cfg.loss.solver == "heun" else ddim_step


def solver_schedule(cfg: ConsistencyDistillConfig, s: Setup):
    """The schedule the teacher's step runs on: t = 0 as `loss.solver_zero` says."""
    return s.schedule.at_zero(cfg.loss.solver_zero)


def segments_at(cfg: ConsistencyDistillConfig, step: int, total: int) -> int:
    """MLCM's progressive training: the stage's segment count (equal stages over the run's horizon)."""
    stages = cfg.loss.segments
    return stages[min(step * len(stages) // max(total, 1), len(stages) - 1)]


def guided_teacher(run: Run, w: torch.Tensor, labels: torch.Tensor):
    """x0 of the teacher with LCM's guidance x0_c + w (x0_c - x0_u), w per sample (0: the conditional)."""
    return guided(run.teacher, lcm_guidance_to_cfg(w), run.setup.conditioner, labels)


def states(run: Run, draw: Draw, level: torch.Tensor, w: torch.Tensor):
    """(labels, x at grid[level + 1], the teacher's step from it to grid[level])."""
    s = run.setup
    grid = run.grid.to(s.device)
    start, end = grid[level + 1], grid[level]
    if run.trajectories is not None:
        which = draw.index(len(run.trajectories))
        x, x_prev = run.trajectories.pair(which, level)
        return run.trajectories.labels[which.to(s.device)], x.to(s.device), x_prev.to(s.device)
    images, labels = draw.real(s.real)
    labels = labels if labels is not None else draw.labels(s.conditioner)
    x = s.schedule.add_noise(s.space.encode(images), draw.randn(*s.shape), start.float())
    with torch.no_grad():
        x_prev = solver(run.cfg)(guided_teacher(run, w, labels), solver_schedule(run.cfg, s), x, start, end)
    return labels, x, x_prev


def consistency_metric(run: Run, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    lo = run.cfg.loss
    if lo.metric == "huber":
        return losses.lcm_huber_loss(pred, target, 0.001 if lo.huber_c is None else lo.huber_c)
    if lo.metric == "pseudo_huber":
        c = 0.00054 * pred[0].numel() ** 0.5 if lo.huber_c is None else lo.huber_c
        return losses.pseudo_huber_loss(pred, target, c)
    return losses.consistency_l2_loss(pred, target)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """One update on the step's micro-batches (`accumulate`), then the target's EMA and the student's."""
    segments = segments_at(run.cfg, step, run.setup.horizon.total)
    logs, _ = accumulate(draw, lambda view: consistency_loss(run, view, segments))
    params = trainable_params(run.generator)
    update(run.setup.accelerator, params, run.opt, run.sched, grad_clip=run.cfg.optim.grad_clip)
    if run.target is not None:
        update_target(run)
    if run.ema is not None:
        run.ema.step(params)
    return logs | {"segments": float(segments)}


def consistency_loss(run: Run, draw: Draw, segments: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The student at (x, grid[level + 1]) against its target at the teacher's step (x_prev, grid[level])."""
    cfg, s = run.cfg, run.setup
    lo = cfg.loss
    level = draw.index(len(run.grid) - 1).to(s.device)  # the pair (grid[level + 1], grid[level])
    w = lo.w_min + (lo.w_max - lo.w_min) * draw.rand()
    labels, x, x_prev = states(run, draw, level, w)
    grid = run.grid.to(s.device)
    start, end = grid[level + 1], grid[level]
    cond = s.conditioner.cond(labels)
    if cfg.model.guidance_embedding_dim is not None:
        cond["w"] = w

    # The student at (x, start); its target from (x_prev, end): the boundary, or a segment's lower edge,
    # is x_prev itself.
    online = run.generator(x, start.float(), **cond)
    target_net = run.target if run.target is not None else s.unwrap(run.generator)
    with torch.no_grad():
        target = target_net(x_prev, end.float(), **cond)
    if max(lo.segments) > 1:
        seg = SegmentConsistencyDenoiser(run.teacher, segment_edges(run.grid, segments))
        online = seg.jump(x, start, online)
        with torch.no_grad():
            target = seg.jump(x_prev, end, target)
        at_edge = end.double() <= seg.lower_edge(start)
    else:
        at_edge = level == 0
    target = torch.where(at_edge.view(-1, *([1] * len(s.shape))), x_prev, target)
    loss = consistency_metric(run, online, target)
    return loss, {"loss": loss.item()}


def students(run: Run) -> list[Student]:
    """The student holds the whole skip grid (999, 979, ..., 19) and samples `model.inference_steps` of it by
    default, re-noising x0 between steps (LCM) or with TCD's `model.gamma` (0: MLCM's deterministic jumps)."""
    ts = run.grid[1:].flip(0)
    m = run.cfg.model
    lora = m.lora_rank is not None
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=ts, ema=run.ema, name=NAME,
                               steps=m.inference_steps, gamma=m.gamma, lora_adapter="student" if lora else None,
                               tags=("lcm-lora",) if lora else ())]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: ConsistencyDistillConfig) -> list:
    """The teacher (its solver step runs under no_grad), the student (a copy, a copy with the w-embedding, or an
    LCM-LoRA adapter "student" on the teacher's network), and with `loss.target=ema` its frozen target (a copy of
    the student, or a copy of its adapter). Only the student's forward backpropagates."""
    from stepdistill.training.plan import LoRA, Pass, PlannedRole

    m, ckpt, ema = cfg.model, cfg.model.gradient_checkpointing, bool(cfg.train.ema_decay)
    student = (Pass("generator"),)
    roles = [PlannedRole.teacher()]
    if m.lora_rank is not None:
        roles.append(PlannedRole("generator", "lora", lora=LoRA(m.lora_rank, m.lora_alpha, tuple(m.lora_targets),
                                                                name="student"),
                                 ema=ema, gradient_checkpointing=ckpt, passes=student))
        if cfg.loss.target == "ema":
            roles.append(PlannedRole("target", "lora", lora=LoRA(m.lora_rank, m.lora_alpha, tuple(m.lora_targets),
                                                                 name="student_target"),
                                     trainable=False, optimizers=()))
        return roles
    config = () if m.guidance_embedding_dim is None else (("time_cond_proj_dim", m.guidance_embedding_dim),)
    roles.append(PlannedRole("generator", "copy", config=config, ema=ema, gradient_checkpointing=ckpt, passes=student))
    if cfg.loss.target == "ema":
        roles.append(PlannedRole("target", "copy", of="generator", trainable=False, optimizers=()))
    return roles


def main(cfg: ConsistencyDistillConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], ConsistencyDistillConfig)
