"""TAD-SR: one-step diffusion super-resolution by time-aware distillation (He et al. 2024, NeurIPS,
arXiv:2408.07476; official code `LearningHx/TAD-SR`, `training_losses_distill` / `training_losses_D`).

    accelerate launch recipes/tadsr.py                              # the shipped x4 SR teacher, natural patches
    accelerate launch recipes/tadsr.py loss.hsd_weight=0 loss.gan_weight=0   # the regression-only student
    accelerate launch recipes/tadsr.py loss.hsd_noise=uniform       # the official code's U[0, 1) HSD noise

Algorithm: the student is a copy of the SR teacher used at its last timestep (one step: the teacher's own
one-step output at initialisation); for noise z and a low-resolution image y (a training patch, degraded):
  1. regression: MSE between the student's image x = G(z, y) and the teacher's multistep output x_T from the
     same z and y (solved once before training, `loss.regression_*`; TAD-SR solves it online);
  2. high-frequency score distillation (HSD): x and x_T noised with the same noise to a small level
     t < `loss.hsd_max_t`; the frozen teacher's noise predictions there give sg(eps(x_t) - eps(x_T,t)), fed to
     x through mean(grad * x) (`losses.hsd_loss`): at small t the two predictions differ by fine detail, which
     regression alone averages away;
  3. a time-aware GAN: real HR patches and x, both noised to t ~ U[0, gan_max_t], are judged on the frozen
     teacher's bottleneck features (the student's path keeps its gradient through the teacher) by a head told
     t (`TimeAwareGANHead`); hinge loss for the head, -D(x) for the student.
The paper's weights are the defaults (regression 1, HSD 1, GAN 0.02); AdamW without weight decay for both, EMA.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

from stepdistill import losses
from stepdistill.conditioning import LRConditioner
from stepdistill.data.ode_pairs import ODEPairs, make_ode_pairs
from stepdistill.denoiser import to_eps
from stepdistill.guidance import CFGDenoiser
from stepdistill.discriminator import TimeAwareGANHead
from stepdistill.networks import trainable
from stepdistill.roles import make_generator, make_real_score
from stepdistill.samplers import SamplerName
from stepdistill.time_sampling import UniformTime
from stepdistill.student import Student
from stepdistill.training import (EMBEDDED_MINUTES, RecipeConfig, Draw, EvalConfig, Setup, TrainConfig, check_optim,
                                  accumulate, cli, make_optimizer, one_step_timesteps, run_recipe, update,
                                  trainable_params)

NAME = "tadsr"


@dataclass
class ModelConfig:
    teacher: str = "sr"  # the shipped x4 SR teacher, or a folder of an LR-conditioned teacher (sr_scale)
    generator_timesteps: tuple[float, ...] = (999.0,)  # one step from the teacher's last timestep
    gradient_checkpointing: bool = False


@dataclass
class LossConfig:
    regression_weight: float = 1.0
    regression_pairs: int = 2048  # teacher outputs, solved once (noise, LR image) -> x_T
    regression_sampler: SamplerName = "dpmpp_2m"
    regression_nfe: int = 15  # TAD-SR's teacher: ResShift at 15 steps
    hsd_weight: float = 1.0
    # HSD levels: t ~ U[0, hsd_max_t] of the schedule (the official code: ResShift's 3 least noisy of 15 steps)
    hsd_max_t: float = 0.2
    # "gaussian": the same N(0, I) noise on both images; "uniform": the official code's th.rand_like, U[0, 1)
    hsd_noise: Literal["gaussian", "uniform"] = "gaussian"
    gan_weight: float = 0.02
    gan_max_t: float = 0.9  # the discriminator's levels, U[0, gan_max_t] (official: 14 of ResShift's 15 steps)


@dataclass
class OptimConfig:
    lr_generator: float = 5e-5  # official, both networks
    lr_discriminator: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass
class TADSRConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   batch_size=16, ema_decay=0.999,
                                                                   output_dir="outputs/tadsr_patches"))
    # the teacher's default: DPM-Solver++(2M) at 15 evaluations, the regression targets' (TAD-SR: 15 steps)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(teacher_nfe=15))


@dataclass(kw_only=True)
class Run:
    cfg: TADSRConfig
    setup: Setup
    ts: torch.Tensor
    teacher: torch.nn.Module  # frozen: targets, HSD scores, discriminator features
    generator: torch.nn.Module
    head: Optional[torch.nn.Module]
    opt_g: torch.optim.Optimizer
    opt_d: Optional[torch.optim.Optimizer]
    sched_g: object
    sched_d: object
    ema: object
    pairs: ODEPairs


def setup(cfg: TADSRConfig) -> Run:
    """Validate, build the student, the discriminator head and the teacher's outputs. Errors raise here."""
    loss = cfg.loss
    for key in ("regression_weight", "hsd_weight", "gan_weight"):
        if getattr(loss, key) < 0:
            raise ValueError(f"loss.{key}={getattr(loss, key)} must be >= 0")
    for key in ("hsd_max_t", "gan_max_t"):
        if not 0 < getattr(loss, key) <= 1:
            raise ValueError(f"loss.{key}={getattr(loss, key)} must lie in (0, 1] (a fraction of the noise levels)")
    if loss.regression_pairs < 1 or loss.regression_nfe < 1:
        raise ValueError(f"loss.regression_pairs={loss.regression_pairs} and loss.regression_nfe="
                         f"{loss.regression_nfe} must be >= 1")
    s = Setup.build(train=cfg.train, teacher=cfg.model.teacher, resume=cfg.resume, data=cfg.data,
                    need_images=loss.gan_weight > 0)
    if not isinstance(s.conditioner, LRConditioner):
        raise ValueError(f"TAD-SR distils a super-resolution teacher (conditioned on a low-resolution image); "
                         f"{cfg.model.teacher} is conditioned by {type(s.conditioner).__name__}")
    ts = one_step_timesteps(cfg.model.generator_timesteps, s.schedule)
    check_optim(cfg.optim, cfg.train.max_steps)
    teacher = make_real_score(s.teacher)
    generator = make_generator(s.teacher, float(ts[0]), gradient_checkpointing=cfg.model.gradient_checkpointing)
    o = cfg.optim
    gen_params = trainable_params(generator)
    opt_g, sched_g = make_optimizer(gen_params, lr=o.lr_generator, betas=o.betas, weight_decay=o.weight_decay,
                                    warmup_steps=o.warmup_steps, name="generator")
    generator, opt_g, sched_g = s.prepare(generator, opt_g, sched_g)
    head = opt_d = sched_d = None
    if loss.gan_weight > 0:
        probe = s.conditioner.cond(torch.zeros(1, dtype=torch.long, device=s.device))
        head = TimeAwareGANHead.for_denoiser(teacher, torch.zeros(1, *s.shape, device=s.device), float(ts[0]), **probe)
        opt_d, sched_d = make_optimizer(trainable_params(head), lr=o.lr_discriminator, betas=o.betas,
                                        weight_decay=o.weight_decay, warmup_steps=o.warmup_steps,
                                        name="discriminator")
        head, opt_d, sched_d = s.prepare(head, opt_d, sched_d)
    ema = s.ema_of(generator, cfg.train.ema_decay)
    pairs = make_ode_pairs(CFGDenoiser(teacher, 1.0), s.schedule, s.conditioner, s.shape, n=loss.regression_pairs,
                           sampler=loss.regression_sampler, nfe=loss.regression_nfe, seed=cfg.train.seed,
                           accelerator=s.accelerator, cache=s.cache("teacher_outputs"),
                           identity=s.identity)
    return Run(cfg=cfg, setup=s, ts=ts, teacher=teacher, generator=generator, head=head, opt_g=opt_g, opt_d=opt_d,
               sched_g=sched_g, sched_d=sched_d, ema=ema, pairs=pairs)


def hsd_grads(run: Run, draw: Draw, x: torch.Tensor, x_teacher: torch.Tensor, cond: dict) -> tuple:
    """The teacher's noise predictions at x and x_T noised with the same noise to a small level."""
    s, loss = run.setup, run.cfg.loss
    t = draw.times(UniformTime(0.0, loss.hsd_max_t), s.schedule)
    noise = draw.randn(*s.shape) if loss.hsd_noise == "gaussian" else draw.uniform(*s.shape)
    alpha, sigma = s.schedule.alpha(t), s.schedule.sigma(t)
    x_t = s.schedule.add_noise(x.detach(), noise, t)
    xT_t = s.schedule.add_noise(x_teacher, noise, t)
    with torch.no_grad():
        x0 = run.teacher(torch.cat([x_t, xT_t]), torch.cat([t, t]), **{k: torch.cat([v, v]) for k, v in cond.items()})
    x0_s, x0_T = x0.chunk(2)
    return to_eps(x_t, x0_s, alpha, sigma), to_eps(xT_t, x0_T, alpha, sigma)


def gan_times(run: Run, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator levels, and the same as fractions of the schedule (what the head is told)."""
    s = run.setup
    t = draw.times(UniformTime(0.0, run.cfg.loss.gan_max_t), s.schedule)
    return t, (t - s.schedule.t_min) / (s.schedule.t_max - s.schedule.t_min)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """The student's update, then the discriminator's on the same (detached) samples; each phase over the step's
    micro-batches (`accumulate`)."""
    cfg, s = run.cfg, run.setup
    logs, (x, labels) = accumulate(draw, lambda view: student_loss(run, view))
    gen_params = trainable_params(run.generator)
    update(s.accelerator, gen_params, run.opt_g, run.sched_g, grad_clip=cfg.optim.grad_clip)
    if run.ema is not None:
        run.ema.step(gen_params)
    if run.head is not None:
        more, _ = accumulate(draw, lambda view, x, labels: discriminator_loss(run, view, x, labels), x, labels)
        update(s.accelerator, trainable_params(run.head), run.opt_d, run.sched_d, grad_clip=cfg.optim.grad_clip)
        logs |= more
    return logs


def student_loss(run: Run, draw: Draw) -> tuple[torch.Tensor, dict[str, float], torch.Tensor, torch.Tensor]:
    """Regression, HSD and the time-aware GAN's generator side; also the detached samples and their LR labels."""
    cfg, s = run.cfg, run.setup
    schedule, conditioner, shape, loss_cfg = s.schedule, s.conditioner, s.shape, cfg.loss
    i = draw.index(len(run.pairs))
    z, labels, x_teacher = run.pairs.z[i], run.pairs.labels[i], run.pairs.x[i]
    cond = conditioner.cond(labels)
    x = run.generator(z, **cond)
    # 1. Regression to the teacher's multistep output from the same noise and LR image.
    loss_reg = losses.regression_loss(x, x_teacher)
    loss = loss_cfg.regression_weight * loss_reg
    logs = {"loss_reg": loss_reg.item()}
    # 2. High-frequency score distillation at small noise levels.
    if loss_cfg.hsd_weight > 0:
        eps_s, eps_T = hsd_grads(run, draw, x, x_teacher, cond)
        loss_hsd = losses.hsd_loss(x, eps_s, eps_T)
        loss = loss + loss_cfg.hsd_weight * loss_hsd
        logs["loss_hsd"] = loss_hsd.item()
    # 3. Time-aware GAN, generator side: through the frozen teacher's features, to x.
    head = s.unwrap(run.head)
    if head is not None:
        t, frac = gan_times(run, draw)
        features = run.teacher.features(schedule.add_noise(x, draw.randn(*shape), t), t, **cond)
        with trainable(head, False):  # the head's weights take no gradient from the student's loss
            loss_g = losses.hinge_generator_loss(head(features, frac))
        loss = loss + loss_cfg.gan_weight * loss_g
        logs["loss_g_gan"] = loss_g.item()
    return loss, logs, x.detach(), labels


def discriminator_loss(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, float]]:
    """4. Time-aware GAN, discriminator side: real HR patches (with their own LR images) against x."""
    s = run.setup
    schedule, conditioner, shape = s.schedule, s.conditioner, s.shape
    real, real_labels = draw.real(s.real)
    t, frac = gan_times(run, draw)
    t2, frac2 = torch.cat([t, t]), torch.cat([frac, frac])  # each pair judged at one level
    noise = torch.cat([draw.randn(*shape), draw.randn(*shape)])
    noised = schedule.add_noise(torch.cat([real, x]), noise, t2)
    both = conditioner.cond(torch.cat([real_labels, labels]))
    with torch.no_grad():
        features = run.teacher.features(noised, t2, **both)
    logits_real, logits_fake = run.head(features, frac2).chunk(2)
    loss_d = losses.hinge_discriminator_loss(logits_real, logits_fake)
    return loss_d, {"loss_d": loss_d.item(), "d_real": logits_real.mean().item(),
                    "d_fake": logits_fake.mean().item()}


def students(run: Run) -> list[Student]:
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=run.ts, ema=run.ema, name=NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: TADSRConfig) -> list:
    """The teacher, the student (a full copy) and, with the GAN, the time-aware head on the teacher's features. The
    student's update holds its forward and, with the GAN, the teacher's encoder and the head on its samples (input
    gradients; the HSD scores run under no_grad); the head's update, the head on real and generated features."""
    from stepdistill.training.plan import Pass, PlannedRole

    gan = cfg.loss.gan_weight > 0
    through = (Pass("generator", weights=False, input=True, part="features"),) if gan else ()
    roles = [PlannedRole.teacher(passes=through),
             PlannedRole("generator", "copy", ema=bool(cfg.train.ema_decay),
                         gradient_checkpointing=cfg.model.gradient_checkpointing, passes=(Pass("generator"),))]
    if gan:
        roles.append(PlannedRole("head", "head", head=TimeAwareGANHead, passes=(
            Pass("generator", weights=False, input=True), Pass("head", batch=2))))
    return roles


def main(cfg: TADSRConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], TADSRConfig)
