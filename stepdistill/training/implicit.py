"""Score-implicit distillation, the training loop SiD and SIM share (SIM generalises SiD's loss; Luo et al.
2024, Sec. 3): data-free, one-step, a fake score and a generator in strict 1:1 alternation on one fresh
batch x = G(z) per step (official SiD code, `training/sid_training_loop.py`):

  1. fake score: the denoising loss on sg(x) (SiD Eq. 9), in the teacher's own parameterisation at
     uniform times (SiD-LSG), or with EDM's weighting and lognormal levels (SiD on EDM teachers);
  2. generator: the recipe's loss of (x, x0_real, x0_fake, t) at a noised copy x_t of x, whose gradient
     flows through x and through *both* networks' activations (their parameters are frozen for this step):
     what separates SiD and SIM from DMD, which treats both predictions as constants.

Adam with beta1 = 0, NaN/inf gradients zeroed, optional EMA. LSG (long and short classifier-free
guidance): one guidance scale for the teacher, for training the fake score and for evaluating it.
The recipes (`recipes/sid.py`, `recipes/sim.py`) choose the generator loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch

from .. import losses
from ..denoiser import native_loss_weight
from ..guidance import CFGDenoiser, guided
from ..time_sampling import DiscreteRange, KarrasRamp, LogNormalSigma, fake_score_times
from ..student import Student
from ..networks import trainable
from ..roles import make_fake_score, make_generator, make_real_score
from .draw import Draw
from .sections import LRSchedule
from .setup import (Setup, accumulate, check_optim, check_step_range, make_optimizer, one_step_timesteps,
                    trainable_params, update)


@dataclass
class ModelConfig:
    teacher: str = "digits"  # "digits", a local diffusers folder, or a hub id
    # G(z) = teacher(sigma(t) z, t) at this one time (SiD: sigma_init 2.5 on EDM; SiD-LSG: t = 625 on SD).
    # 800 on the digits teacher's cosine schedule: sigma/alpha = 3.1, SiD's 2.5 in units of sigma_data
    # 0.5 rescaled to the digits' std 0.64. Its FD after 100 steps was 0.88 vs 1.9 from t = 999.
    generator_timesteps: tuple[float, ...] = (800.0,)
    gradient_checkpointing: bool = False  # the generator loss backpropagates through two more networks


@dataclass
class LossConfig:
    """The sections' shared keys; each recipe's `LossConfig` adds its loss's own."""

    guidance: float = 1.0  # LSG: teacher, fake-score training and fake-score evaluation alike
    # Generator-loss times: "index", an index drawn from [min_step, max_step) of the levels (SiD-LSG's
    # t ~ U[20, 980) on SD); "karras", SiD's EDM levels (sigma^(1/7) uniform over [0.002, 24.4]).
    time_sampling: Literal["index", "karras"] = "index"
    min_step: float = 0.02
    max_step: float = 0.98
    # Fake-score loss: "native", MSE in the teacher's own parameterisation (how it was trained); "eps",
    # eps-MSE whatever the parameterisation (SiD-LSG's: its v-MSE x snr / (snr + 1) on v-prediction
    # teachers; the same as native on eps teachers, 1 / alpha^2 times lighter than native on v ones); or
    # "edm", EDM's lambda(sigma) with lognormal levels (SiD on EDM teachers). On the v-prediction digits
    # teacher native scored FD 0.220 vs 0.23-0.25 with edm: the lognormal puts <1% of its levels where the
    # generator loss puts a quarter (sigma/alpha > 2.3).
    fake_weighting: Literal["edm", "native", "eps"] = "native"
    # With "native" / "eps", the times: "teacher" (its training levels, `TeacherLevels`), "index" (an index
    # drawn from [min_step, max_step) of the levels: SiD-LSG's integer U[20, 980)), or "uniform".
    fake_times: Literal["teacher", "index", "uniform"] = "teacher"
    # "shared": one batch x = G(z) serves the fake-score and the generator update (G does not change
    # between them); "fresh": the fake score gets a batch of its own, as the official SiD loop draws two.
    fake_samples: Literal["shared", "fresh"] = "shared"
    p_mean: float = -1.2  # EDM lognormal noise levels of the fake-score loss
    p_std: float = 1.2


@dataclass
class OptimConfig:
    # On digits a generator rate of 1e-4 made FD swing 2x within 100 steps (the fake score cannot
    # track it); 3e-5 with the fake score at 1e-4 descends steadily, and the cosine decay settles it.
    lr_generator: float = 3e-5
    lr_fake: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.999)  # SiD: beta1 = 0 for both networks
    eps: float = 1e-8  # 1e-6 with fp16 in the official code
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: Optional[float] = 10.0  # SiD-LSG README: fp16 "requires gradient clipping"
    # "linear" / "cosine": both rates decay to zero at the horizon (train.max_steps, or what the time limit fits)
    lr_schedule: LRSchedule = "cosine"


GeneratorLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Conditions:
    """Which condition each network sees for a row of the step's batch, and what the row weighs. These are SiD's
    and SIM's: one drawn label for the generator, the teacher and the fake score, every row alike. A recipe that
    conditions the networks differently overrides them (SFD, `recipes/sfd.py`: on forgotten rows the teacher sees an
    override label while G and the fake score see the forgotten one, and each term has its own coefficient)."""

    def labels(self, run: "Run", draw: Draw) -> torch.Tensor:
        """The rows' labels: G's and the fake score's condition."""
        return draw.labels(run.setup.conditioner)

    def teacher(self, draw: Draw, labels: torch.Tensor) -> torch.Tensor:
        """The teacher's condition for rows of `labels` (drawn from `draw` where it is random)."""
        return labels

    def fake_weight(self, labels: torch.Tensor) -> torch.Tensor | float:
        """Each row's weight in the fake score's denoising loss."""
        return 1.0

    def weighted(self, generator_loss: GeneratorLoss, labels: torch.Tensor) -> GeneratorLoss:
        """The generator loss for rows of `labels` (a recipe that weights rows binds their weights here)."""
        return generator_loss


SAME = Conditions()


@dataclass(kw_only=True)
class Run:
    """Everything `setup` builds; the steps below read it."""

    cfg: object  # the recipe's config: model, loss (a LossConfig), optim, train, data sections
    setup: Setup
    ts: torch.Tensor  # the generator's one timestep
    real: CFGDenoiser  # the teacher with LSG guidance
    fake_score: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    generator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_f: torch.optim.Optimizer
    sched_g: object
    sched_f: object
    ema: object


def setup(cfg) -> Run:
    """Validate, build the trio, optimisers and data. Every error is raised here, before any step."""
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data)
    teacher = s.teacher
    ts = one_step_timesteps(cfg.model.generator_timesteps, teacher.schedule)
    check_optim(cfg.optim, cfg.train.max_steps)
    check_step_range(cfg.loss)
    if cfg.loss.guidance != 1.0 and s.conditioner.uncond(torch.zeros(1, dtype=torch.long)) is None:
        raise ValueError("loss.guidance != 1 needs a conditional teacher with an unconditional branch")
    fake_score = make_fake_score(teacher, gradient_checkpointing=cfg.model.gradient_checkpointing)
    generator = make_generator(teacher, float(ts[0]), gradient_checkpointing=cfg.model.gradient_checkpointing)
    s.shard(generator, fake_score)  # FSDP over CPU processes (`sharding`), before the optimisers hold the weights
    o = cfg.optim
    gen_params = trainable_params(generator)
    decay = dict(warmup_steps=o.warmup_steps, schedule=o.lr_schedule, total_steps=s.horizon)
    opt_g, sched_g = make_optimizer(gen_params, lr=o.lr_generator, betas=o.betas, eps=o.eps,
                                    weight_decay=o.weight_decay, name="generator", **decay)
    opt_f, sched_f = make_optimizer(trainable_params(fake_score), lr=o.lr_fake, betas=o.betas, eps=o.eps,
                                    weight_decay=o.weight_decay, name="fake_score", **decay)
    generator, fake_score, opt_g, opt_f, sched_g, sched_f = s.prepare(
        generator, fake_score, opt_g, opt_f, sched_g, sched_f)
    ema = s.ema_of(generator, cfg.train.ema_decay)
    return Run(cfg=cfg, setup=s, ts=ts, real=CFGDenoiser(
        make_real_score(teacher, gradient_checkpointing=cfg.model.gradient_checkpointing), cfg.loss.guidance),
               fake_score=fake_score, generator=generator, opt_g=opt_g, opt_f=opt_f, sched_g=sched_g,
               sched_f=sched_f, ema=ema)


def update_role(run: Run, module: torch.nn.Module, opt, sched) -> None:
    """One optimiser step on `module`'s trainable weights, NaN/inf gradients zeroed as SiD does."""
    update(run.setup.accelerator, trainable_params(module), opt, sched, grad_clip=run.cfg.optim.grad_clip,
           nan_to_num=True)


def inputs(run: Run, draw: Draw, conditions: Conditions = SAME) -> tuple[torch.Tensor, torch.Tensor]:
    """The generator's noise z and labels for a batch."""
    labels = conditions.labels(run, draw)
    return draw.randn(*run.setup.shape), labels


def generate(run: Run, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """x = G(z) for `labels`, with G's graph where grad is enabled (for the generator step)."""
    return run.generator(z, **run.setup.conditioner.cond(labels))


def fake_score_loss(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor, conditions: Conditions = SAME
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """Denoising on detached G samples (SiD Eq. 9), with LSG's guidance on the fake score's output."""
    cfg, schedule, conditioner = run.cfg, run.setup.schedule, run.setup.conditioner
    x = x.detach()
    rows = conditions.fake_weight(labels)  # of the drawn labels, before dropout replaces some by the null label
    labels = draw.dropped(labels, cfg.data.prompt_dropout)
    if cfg.loss.fake_weighting == "edm":  # EDM Eq. 8: lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
        t = draw.times(LogNormalSigma(cfg.loss.p_mean, cfg.loss.p_std), schedule)
        weight = native_loss_weight("edm", 1.0, schedule.sigma(t) / schedule.alpha(t))
    else:
        t = draw.times(DiscreteRange(cfg.loss.min_step, cfg.loss.max_step) if cfg.loss.fake_times == "index"
                       else fake_score_times(cfg.loss.fake_times), schedule)
        kind = "epsilon" if cfg.loss.fake_weighting == "eps" else run.setup.teacher.prediction_type
        weight = native_loss_weight(kind, schedule.alpha(t), schedule.sigma(t))
    x_t = schedule.add_noise(x, draw.randn(*run.setup.shape), t)
    loss = losses.denoising_loss(guided(run.fake_score, cfg.loss.guidance, conditioner, labels)(x_t, t), x,
                                 weight * rows)
    return loss, {"loss_fake": loss.item()}


def generator_objective(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor, generator_loss: GeneratorLoss,
                        conditions: Conditions = SAME) -> tuple[torch.Tensor, dict[str, float]]:
    """`generator_loss(x, x0_real, x0_fake, t)` at a noised copy of the G samples x (with their graph);
    gradients reach G through x, x_t and both frozen networks' activations (run with the fake score frozen)."""
    cfg, schedule, conditioner = run.cfg, run.setup.schedule, run.setup.conditioner
    t = draw.times(KarrasRamp() if cfg.loss.time_sampling == "karras" else
                   DiscreteRange(cfg.loss.min_step, cfg.loss.max_step), schedule)
    x_t = schedule.add_noise(x, draw.randn(*run.setup.shape), t)  # not detached: SiD differentiates through x_t
    fake = run.setup.unwrap(run.fake_score)  # its weights take no gradient here: DDP must not wait for them
    x0_real = guided(run.real.denoiser, cfg.loss.guidance, conditioner, conditions.teacher(draw, labels))(x_t, t)
    x0_fake = guided(fake, cfg.loss.guidance, conditioner, labels)(x_t, t)
    generator_loss = conditions.weighted(generator_loss, labels)
    loss = generator_loss(x, x0_real, x0_fake, t)
    return loss, {"loss_g": loss.item()}


def alternate(run: Run, draw: Draw, generator_loss: GeneratorLoss, conditions: Conditions = SAME) -> dict[str, float]:
    """One step of SiD's and SIM's alternation: the fake score denoises G's detached samples, then the
    generator descends `generator_loss` through both networks. `loss.fake_samples`: "fresh", two batches (the
    official SiD loop runs G twice per step, once under no_grad for the fake score); "shared", one batch for both,
    as in SwiftBrush's loop: G does not change between the two updates, so one forward serves both (a network pass
    saved per step, 5% of a digits step). Each phase runs over the step's micro-batches (`accumulate`); with
    several, a shared batch is generated again for the generator from the same noise (a micro-batch's graph at a
    time), which gives the same samples. `conditions`: who sees which label, and the rows' weights (`Conditions`)."""

    def fake_on_kept_inputs(view):
        z, labels = inputs(run, view, conditions)
        with torch.no_grad():
            x = generate(run, z, labels)
        return (*fake_score_loss(run, view, x, labels, conditions), z, labels)

    def generator_on(view, z, labels):
        return generator_objective(run, view, generate(run, z, labels), labels, generator_loss, conditions)

    if run.cfg.loss.fake_samples == "fresh":
        logs, _ = accumulate(draw, lambda view: fake_on_kept_inputs(view)[:2])
        update_role(run, run.fake_score, run.opt_f, run.sched_f)
        with trainable(run.setup.unwrap(run.fake_score), False):
            more, _ = accumulate(draw, lambda view: generator_on(view, *inputs(run, view, conditions)))
            update_role(run, run.generator, run.opt_g, run.sched_g)
    elif draw.passes == 1:  # one forward of G with its graph serves both updates
        z, labels = inputs(run, draw, conditions)
        x = generate(run, z, labels)
        logs, _ = accumulate(draw, lambda view, x, labels: fake_score_loss(run, view, x, labels, conditions), x, labels)
        update_role(run, run.fake_score, run.opt_f, run.sched_f)
        with trainable(run.setup.unwrap(run.fake_score), False):
            more, _ = accumulate(draw, lambda view, x, labels: generator_objective(run, view, x, labels,
                                                                                  generator_loss, conditions), x, labels)
            update_role(run, run.generator, run.opt_g, run.sched_g)
    else:
        logs, (z, labels) = accumulate(draw, fake_on_kept_inputs)
        update_role(run, run.fake_score, run.opt_f, run.sched_f)
        with trainable(run.setup.unwrap(run.fake_score), False):
            more, _ = accumulate(draw, generator_on, z, labels)
            update_role(run, run.generator, run.opt_g, run.sched_g)
    if run.ema is not None:
        run.ema.step(trainable_params(run.generator))
    return logs | more


def student(run: Run, name: str) -> Student:
    return Student.from_setup(run.setup, generator=run.generator, timesteps=run.ts, ema=run.ema, name=name)
