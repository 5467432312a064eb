"""Distribution matching with a GAN, the training DMD2 and multi-student distillation share (DMD2: Yin et al.
2024, arXiv:2405.14867; MSD: Song et al. 2024 trains one such student per part of the condition space).

Algorithm (paper Sec. 4, official code `train_sd.py`): a generator G, initialised from the teacher,
maps noise to images. Every step the fake score (an online denoiser of G's samples) takes a
denoising step, and the discriminator head on its bottleneck a GAN step; every `update_ratio` steps
G takes a step along the distribution-matching gradient (real score minus fake score) plus the
non-saturating GAN loss (two time-scale update rule). Multistep generators are trained on their own
samples (backward simulation).

Every random draw (noise, times, labels, real images) is made for the *global* batch from a
generator seeded by (seed, step), and each process takes its slice: one and N processes see the
same data, so their runs agree up to reduction order.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Optional

import torch
from accelerate.utils import broadcast
from diffusers.training_utils import EMAModel

from .. import losses
from ..data.ode_pairs import ODEPairs, make_ode_pairs
from ..denoiser import native_loss_weight
from ..guidance import CFGDenoiser
from ..discriminator import GANHead
from ..networks import trainable
from ..roles import make_fake_score, make_generator, make_real_score
from ..samplers import SamplerName, backward_simulation
from ..time_sampling import DiscreteRange, FakeTimes, UniformTime, fake_score_times
from .draw import Draw
from .sections import LRSchedule
from .setup import Setup, accumulate, check_optim, check_step_range, make_optimizer, trainable_params, update

@dataclass
class ModelConfig:
    teacher: str = "digits"  # "digits", a local diffusers folder, or a hub id
    generator_timesteps: tuple[float, ...] = (999.0,)  # one entry: one-step; DMD2 4-step: 999,749,499,249
    fake_score_lora_rank: Optional[int] = None  # None: a full copy of the teacher
    generator_lora_rank: Optional[int] = None
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    real_guidance: float = 1.0  # CFG scale of the real score: uncond + s (cond - uncond)
    min_step: float = 0.02  # DMD times drawn from [2%, 98%] of the schedule's levels
    max_step: float = 0.98
    # Fake-score denoising times: "teacher", the teacher's training levels as the official code draws them
    # (U[0, 1000) indices on VP, the Karras table on EDM: where the DMD loss queries it), or "uniform" in native time.
    fake_times: FakeTimes = "teacher"
    # The fake score's samples: "fresh", its own batch, drawn before the generator's (so it has seen the
    # generator's latest weights when the generator next reads it); "shared", the official order: on
    # generator steps G steps first and the fake score trains on that step's (detached) samples.
    fake_samples: Literal["fresh", "shared"] = "fresh"
    gan: bool = True
    gan_generator_weight: float = 3e-2
    # DMD2 authors' advice: pick the generator's GAN weight so that its gradient on the generated
    # image has `gan_balance` times the norm of the distribution-matching gradient. When set, the
    # weight follows that ratio (EMA-smoothed) instead of `gan_generator_weight`. On digits 0.5-1
    # scored best; 6 (a GAN-dominated generator) and no GAN at all scored worse (experiments/tuning/README.md).
    gan_balance: Optional[float] = 1.0
    gan_discriminator_weight: float = 1e-1
    gan_max_t: float = 0.2  # diffusion-GAN: real and fake are noised at t ~ U[0, gan_max_t] fraction
    # The training step at which the GAN terms (discriminator and generator) join; before it, distribution
    # matching alone. MSD trains in stages, DM then DM + GAN; DMD2's SDXL run resumed a DM-only run with the GAN.
    gan_start_step: int = 0
    # DMD's regression loss (Eq. 9) on noise-image pairs from the teacher's ODE solver (at the real
    # score's guidance), solved once before training; 0 turns it off, as in DMD2's recipes.
    regression_weight: float = 0.0
    regression_pairs: int = 1024
    regression_sampler: SamplerName = "dpmpp_2m"
    regression_nfe: int = 35


@dataclass
class OptimConfig:
    lr_generator: float = 1e-4
    lr_fake: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    weight_decay: float = 0.01
    warmup_steps: int = 100  # training steps (the generator warms up over warmup_steps / update_ratio of its own)
    grad_clip: float = 10.0
    update_ratio: int = 5  # fake-score updates per generator update
    # "linear" / "cosine": both learning rates decay to zero at the run's horizon: train.max_steps, or the
    # steps that fit train.time_limit_minutes on this machine (the generator's at its own horizon / update_ratio-th).
    lr_schedule: LRSchedule = "cosine"


class GANWeight:
    """The generator's GAN weight. With `loss.gan_balance` set it follows the DMD2 authors' advice
    continuously: balance * |grad_x L_dm| / |grad_x L_gan|, both norms smoothed by an EMA over
    generator steps (the adaptive weight of Esser et al. 2021, Eq. 7, measured on the image).
    Registered for checkpointing, so a resumed run continues with the same weight."""

    def __init__(self, value: float, balance: float | None, decay: float = 0.9):
        self.value, self.balance, self.decay = value, balance, decay
        self.norms: list[float] | None = None  # EMA of (|grad L_dm|, |grad L_gan|)

    def update(self, norm_dm: float, norm_gan: float) -> None:
        if self.norms is None:
            self.norms = [norm_dm, norm_gan]
        else:
            self.norms = [self.decay * a + (1 - self.decay) * b for a, b in zip(self.norms, (norm_dm, norm_gan))]
        self.value = self.balance * self.norms[0] / max(self.norms[1], 1e-20)

    def state_dict(self) -> dict:
        return {"value": self.value, "norms": self.norms}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.norms = float(state["value"]), state["norms"]


@dataclass(kw_only=True)
class Run:
    """Everything `setup` builds; the step functions below read it."""

    cfg: Any  # a config with the model, loss, optim, train and data sections below (DMD2Config, MSDConfig)
    setup: Setup  # accelerator, teacher, conditioner, sample space and shape, real images, resume point
    ts: torch.Tensor  # the generator's timesteps
    real_guided: CFGDenoiser
    fake_score: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    generator: torch.nn.Module
    head: Optional[torch.nn.Module]
    opt_g: torch.optim.Optimizer
    opt_f: torch.optim.Optimizer
    sched_g: object
    sched_f: object
    ema: Optional[EMAModel]
    gan_weight: GANWeight
    pairs: Optional[ODEPairs]  # the regression loss's teacher ODE pairs


def check(cfg, s: Setup) -> torch.Tensor:
    """The model, loss and optim sections checked against the teacher; returns the generator's timesteps."""
    schedule = s.schedule
    ts = torch.tensor(cfg.model.generator_timesteps, dtype=torch.float64)
    if len(ts) == 0 or bool((ts.diff() >= 0).any()) or float(ts.max()) > schedule.t_max:
        raise ValueError(f"model.generator_timesteps must descend within [0, {schedule.t_max}]; got {ts.tolist()}")
    loss_cfg = cfg.loss
    if loss_cfg.regression_weight < 0 or loss_cfg.regression_pairs < 1 or loss_cfg.regression_nfe < 1:
        raise ValueError(f"loss.regression_weight >= 0, regression_pairs >= 1 and regression_nfe >= 1 expected; got "
                         f"{loss_cfg.regression_weight}, {loss_cfg.regression_pairs}, {loss_cfg.regression_nfe}")
    if cfg.optim.update_ratio < 1:
        raise ValueError(f"optim.update_ratio={cfg.optim.update_ratio} must be >= 1 "
                         "(fake-score steps per generator step)")
    if not 0 <= loss_cfg.gan_start_step < cfg.train.max_steps:
        raise ValueError(f"loss.gan_start_step={loss_cfg.gan_start_step} must lie in [0, train.max_steps="
                         f"{cfg.train.max_steps}): the step at which the GAN terms join distribution matching")
    check_optim(cfg.optim, cfg.train.max_steps, steps_per_update=cfg.optim.update_ratio)
    check_step_range(loss_cfg)
    if loss_cfg.gan and loss_cfg.gan_balance is not None and cfg.train.passes(s.accelerator.num_processes) > 1:
        raise ValueError(f"loss.gan_balance={loss_cfg.gan_balance} sets the GAN weight from the whole batch's gradient "
                         f"norms before the loss is formed, which train.micro_batch_size={cfg.train.micro_batch_size} "
                         "splits: set loss.gan_balance=null (a fixed loss.gan_generator_weight, the paper's) or "
                         "train.micro_batch_size=null")
    return ts


def setup(cfg) -> Run:
    """Validate, build the trio, optimisers and data. Every error is raised here, before any step."""
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data,
                    need_images=cfg.loss.gan)
    return build(cfg, s, check(cfg, s))


def build(cfg, s: Setup, ts: torch.Tensor, *, generator: torch.nn.Module | None = None,
          real_guided: CFGDenoiser | None = None, share_fake_with: "Run | None" = None,
          fake_adapter: str = "fake_score") -> Run:
    """One student's trio on `s` (a `Setup`, or a view of one restricted to part of the conditions): the
    fake score, the generator (given, e.g. a smaller student, or a copy of the teacher) and the GAN head,
    their optimisers, prepared by the accelerator and registered for checkpointing. `real_guided` may be
    shared between students (one teacher); `share_fake_with`: another student's run whose fake score, GAN
    head and their optimiser this student trains too (multi-student distillation's shared fake score);
    `fake_adapter`: the name of a LoRA fake score's adapter on the teacher (one per student)."""
    accelerator, teacher, schedule = s.accelerator, s.teacher, s.schedule
    loss_cfg = cfg.loss
    if real_guided is None:
        real_guided = CFGDenoiser(make_real_score(teacher), cfg.loss.real_guidance)
    if share_fake_with is None:
        fake_score = make_fake_score(teacher, lora_rank=cfg.model.fake_score_lora_rank,
                                     gradient_checkpointing=cfg.model.gradient_checkpointing, adapter=fake_adapter)
    else:
        fake_score = share_fake_with.fake_score
    if generator is None:
        generator = make_generator(teacher, float(ts[0]), lora_rank=cfg.model.generator_lora_rank,
                                   gradient_checkpointing=cfg.model.gradient_checkpointing)
    head = None if share_fake_with is None else share_fake_with.head
    if cfg.loss.gan and share_fake_with is None:  # sized by probing the fake score's bottleneck once
        probe_cond = s.conditioner.cond(torch.zeros(1, dtype=torch.long, device=accelerator.device))
        head = GANHead.for_denoiser(s.unwrap(fake_score), torch.zeros(1, *s.shape, device=accelerator.device),
                                    float(ts[0]), **probe_cond)

    # FSDP over CPU processes shards the trained roles before their optimisers hold their weights (`sharding`)
    s.shard(generator, *([fake_score, head] if share_fake_with is None else []))
    # AdamW for G, and for the fake score together with the GAN head.
    o = cfg.optim
    gen_params = trainable_params(generator)
    opt_g, sched_g = make_optimizer(gen_params, lr=o.lr_generator, betas=o.betas, weight_decay=o.weight_decay,
                                    warmup_steps=math.ceil(o.warmup_steps / o.update_ratio), schedule=o.lr_schedule,
                                    total_steps=s.horizon, steps_per_update=o.update_ratio, name="generator")
    if share_fake_with is None:
        opt_f, sched_f = make_optimizer(trainable_params(fake_score, head), lr=o.lr_fake, betas=o.betas,
                                        weight_decay=o.weight_decay, warmup_steps=o.warmup_steps,
                                        schedule=o.lr_schedule, total_steps=s.horizon, name="fake_score")
        generator, fake_score, head, opt_g, opt_f, sched_g, sched_f = s.prepare(
            generator, fake_score, head, opt_g, opt_f, sched_g, sched_f)
    else:  # prepared by the student that built them
        opt_f, sched_f = share_fake_with.opt_f, share_fake_with.sched_f
        generator, opt_g, sched_g = s.prepare(generator, opt_g, sched_g)
    ema = s.ema_of(generator, cfg.train.ema_decay)
    gan_weight = GANWeight(cfg.loss.gan_generator_weight, cfg.loss.gan_balance)
    accelerator.register_for_checkpointing(gan_weight)
    pairs = None
    if loss_cfg.regression_weight > 0:
        pairs = make_ode_pairs(real_guided, schedule, s.conditioner, s.shape, n=loss_cfg.regression_pairs,
                               sampler=loss_cfg.regression_sampler, nfe=loss_cfg.regression_nfe,
                               seed=cfg.train.seed, accelerator=accelerator,
                               cache=s.cache("ode_pairs"), identity=s.identity)
    return Run(cfg=cfg, setup=s, ts=ts, real_guided=real_guided, fake_score=fake_score, generator=generator,
               head=head, opt_g=opt_g, opt_f=opt_f, sched_g=sched_g, sched_f=sched_f, ema=ema,
               gan_weight=gan_weight, pairs=pairs)


def generate(run: Run, draw: Draw, labels: torch.Tensor) -> torch.Tensor:
    """G's samples for this step; multistep generators start from a backward-simulated input."""
    shape = run.setup.shape
    z = draw.randn(*shape)
    cond = run.setup.conditioner.cond(labels)
    if len(run.ts) == 1:
        return run.generator(z, **cond)
    # The step index is drawn once and broadcast, so every process trains the same step.
    k = torch.tensor([draw.integer(len(run.ts))], device=run.setup.device)
    k = int(broadcast(k) if run.setup.accelerator.num_processes > 1 else k)
    draw.k = k
    renoise = [draw.randn(*shape) for _ in range(k)]  # global draws: any process count
    gen = run.setup.unwrap(run.generator)
    x_k = backward_simulation(partial(gen.denoiser, **cond), run.setup.schedule, z * gen.input_scale, run.ts, k,
                              renoise=renoise)
    return run.generator(x_k, float(run.ts[k]), **cond)


@dataclass(frozen=True)
class FakeUpdate:
    """How a fake-score phase's loss enters its optimiser: `weight` times, and stepped (`apply`) or left to
    accumulate for a later one (multi-student distillation's shared fake score: one update per training step on
    every student's samples, so its schedule runs at the training steps' pace)."""

    weight: float = 1.0
    apply: bool = True


def fake_score_loss(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor, *, gan: bool = True
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """On G's samples `x` (without their graph) for `labels`; `gan`: with the discriminator's loss (if it has one)."""
    cfg, s = run.cfg, run.setup
    schedule, shape, conditioner = s.schedule, s.shape, s.conditioner
    # 1. Denoising loss on detached generator samples, in the teacher's own parameterisation.
    t = draw.times(fake_score_times(cfg.loss.fake_times), schedule)
    x_t = schedule.add_noise(x, draw.randn(*shape), t)
    weight = native_loss_weight(s.teacher.prediction_type, schedule.alpha(t), schedule.sigma(t))
    loss = loss_fake = losses.denoising_loss(run.fake_score(x_t, t, **conditioner.cond(labels)), x, weight)
    logs = {"loss_fake": loss_fake.item()}
    # 2. Diffusion-GAN discriminator on the fake score's bottleneck: noised real vs noised fake.
    if run.head is not None and gan:
        real, real_labels = draw.real(s.real)
        real = s.space.encode(real)
        # Real images without labels (an uncaptioned folder): both sides get the null condition, so
        # the discriminator cannot tell them apart by their conditioning.
        fake_labels = labels if real_labels is not None else torch.full_like(labels, -1)
        real_labels = real_labels if real_labels is not None else fake_labels
        gan_times = UniformTime(0.0, cfg.loss.gan_max_t)
        t_gan = torch.cat([draw.times(gan_times, schedule), draw.times(gan_times, schedule)])
        noised = schedule.add_noise(torch.cat([real, x]), torch.cat([draw.randn(*shape), draw.randn(*shape)]), t_gan)
        # One head call per step (DDP expects each module's forward once per backward).
        both = conditioner.cond(torch.cat([real_labels, fake_labels]))
        features = s.unwrap(run.fake_score).features(noised, t_gan, **both)
        logits_real, logits_fake = run.head(features).chunk(2)
        loss_d = losses.discriminator_loss(logits_real, logits_fake)
        loss = loss + cfg.loss.gan_discriminator_weight * loss_d
        logs |= {"loss_d": loss_d.item(), "d_real": torch.sigmoid(logits_real).mean().item(),
                 "d_fake": torch.sigmoid(logits_fake).mean().item()}
    return loss, logs


def update_fake_score(run: Run, fake_update: FakeUpdate = FakeUpdate()) -> None:
    if fake_update.apply:
        update(run.setup.accelerator, trainable_params(run.fake_score, run.head), run.opt_f, run.sched_f,
               grad_clip=run.cfg.optim.grad_clip)


def generator_loss(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor, *, gan: bool = True
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """On G's samples `x` (with their graph) for `labels`; `gan`: with the GAN loss (if it has a head). Run with the
    fake score and the head frozen (`frozen_critics`)."""
    cfg, s = run.cfg, run.setup
    schedule, shape, conditioner = s.schedule, s.shape, s.conditioner
    cond, uncond = conditioner.cond(labels), conditioner.uncond(labels)
    # Unwrapped modules: their weights take no gradient here, so DDP must not wait for them.
    fake, head = run.setup.unwrap(run.fake_score), run.setup.unwrap(run.head)
    # 1. Distribution matching (DMD2 Eq. 2-3): real (with CFG) and fake x0 at a noised copy of x.
    t = draw.times(DiscreteRange(cfg.loss.min_step, cfg.loss.max_step, inclusive=True), schedule)
    x_t = schedule.add_noise(x.detach(), draw.randn(*shape), t)
    with torch.no_grad():
        x0_real = run.real_guided(x_t, t, uncond=uncond, **cond)
        x0_fake = run.fake_score(x_t, t, **cond)
    loss = loss_dm = losses.dmd_loss(x, x0_real, x0_fake)  # fused Triton kernel on CUDA
    logs = {"loss_dm": loss_dm.item()}
    # 2. Non-saturating GAN loss through the fake-score encoder and head.
    if head is not None and gan:
        t_g = draw.times(UniformTime(0.0, cfg.loss.gan_max_t), schedule)
        gan_cond = cond if s.labelled_real else conditioner.cond(torch.full_like(labels, -1))
        features = fake.features(schedule.add_noise(x, draw.randn(*shape), t_g), t_g, **gan_cond)
        loss_g = losses.generator_gan_loss(head(features))
        if run.gan_weight.balance is not None:
            balance_gan_weight(run, x, loss_dm, loss_g)
        loss = loss + run.gan_weight.value * loss_g
        logs |= {"loss_g_gan": loss_g.item(), "gan_weight": run.gan_weight.value}
    # 3. DMD's regression to the teacher's ODE solutions (a multistep generator's first step).
    if run.pairs is not None:
        i = draw.index(len(run.pairs))
        x_reg = run.generator(run.pairs.z[i], **conditioner.cond(run.pairs.labels[i]))
        loss_reg = losses.regression_loss(x_reg, run.pairs.x[i])
        loss = loss + cfg.loss.regression_weight * loss_reg
        logs["loss_reg"] = loss_reg.item()
    return loss, logs


@contextmanager
def frozen_critics(run: Run):
    """The fake score and the head frozen until G's update is done: a checkpointed network recomputes its
    activations in the backward pass, as frozen."""
    with trainable(run.setup.unwrap(run.fake_score), False), trainable(run.setup.unwrap(run.head), False):
        yield


def update_generator(run: Run) -> None:
    params = trainable_params(run.generator)
    update(run.setup.accelerator, params, run.opt_g, run.sched_g, grad_clip=run.cfg.optim.grad_clip)
    if run.ema is not None:
        run.ema.step(params)


def balance_gan_weight(run: Run, x: torch.Tensor, loss_dm: torch.Tensor, loss_g: torch.Tensor) -> None:
    """Update the GAN weight from both losses' gradient norms on x (squared norms averaged over
    processes). The GAN part is a backward through the discriminator only."""
    g_dm, = torch.autograd.grad(loss_dm, x, retain_graph=True)
    g_gan, = torch.autograd.grad(loss_g, x, retain_graph=True)
    norms = run.setup.accelerator.reduce(torch.stack([g_dm.square().sum(), g_gan.square().sum()]), "mean").sqrt()
    run.gan_weight.update(float(norms[0]), float(norms[1]))


def samples(run: Run, draw: Draw, *, graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of G's samples and their labels; `graph`: keep the graph for a generator step."""
    labels = draw.labels(run.setup.conditioner)
    with torch.set_grad_enabled(graph):
        return generate(run, draw, labels), labels


def step(run: Run, draw: Draw, step: int, *, fake_update: FakeUpdate = FakeUpdate()) -> dict[str, float]:
    """The fake score (and discriminator) every step, the generator every `update_ratio` steps (TTUR); the GAN
    terms from `loss.gan_start_step` on. Each phase runs over the step's micro-batches (`accumulate`) before its
    update. `fake_update`: how the fake score's loss enters its optimiser."""
    generator_turn = step % run.cfg.optim.update_ratio == 0
    gan = step >= run.cfg.loss.gan_start_step

    def fake_on_own_samples(view):
        return fake_score_loss(run, view, *samples(run, view, graph=False), gan=gan)

    def generator_on_own_samples(view):
        x, labels = samples(run, view, graph=True)
        return (*generator_loss(run, view, x, labels, gan=gan), x.detach(), labels)

    logs: dict[str, float] = {}
    if run.cfg.loss.fake_samples == "shared" and generator_turn:  # the official order: G first, the fake score
        with frozen_critics(run):                                   # on its (detached) samples
            logs, (x, labels) = accumulate(draw, generator_on_own_samples)
            update_generator(run)
        more, _ = accumulate(draw, lambda view, x, labels: fake_score_loss(run, view, x, labels, gan=gan), x, labels,
                             weight=fake_update.weight)
        logs |= more
        update_fake_score(run, fake_update)
    else:
        logs, _ = accumulate(draw, fake_on_own_samples, weight=fake_update.weight)
        update_fake_score(run, fake_update)
        if generator_turn:
            with frozen_critics(run):
                more, _ = accumulate(draw, generator_on_own_samples)
                update_generator(run)
            logs |= more
    if draw.k is not None:
        logs["backsim_step"] = draw.k
    return logs
