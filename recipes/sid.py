"""SiD: Score identity Distillation (Zhou et al. 2024, ICML, arXiv:2404.04057), with LSG for
text-to-image (SiD-LSG, Zhou et al. 2024, arXiv:2406.01561).

    accelerate launch recipes/sid.py                                          # digits, 1 step, CPU minutes
    accelerate launch recipes/sid.py --config recipes/configs/sid/tiny_t2i.yaml   # text-to-image smoke test
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sid.py \
        --config recipes/configs/sid/sd15.yaml data.prompts=PROMPTS.txt

Algorithm (official code `training/sid_training_loop.py`, `training/sid_loss.py`): data-free. A
generator G (initialised from the teacher) maps noise to images in one step; a fake score (a
trainable copy of the teacher) follows G's distribution by denoising G's detached samples. The two
alternate strictly 1:1 on one fresh batch x = G(z) per step:
  1. fake score: denoising loss on sg(x) (SiD Eq. 9), in the teacher's own parameterisation at uniform
     times (SiD-LSG) or with EDM's weighting and lognormal levels (SiD on EDM teachers);
  2. generator: the SiD loss (Eq. 23) at a noised copy of x,
         (x0_r - x0_f) . ((x0_r - x) - alpha (x0_r - x0_f)) / sg(mean|x - x0_r|),
     whose gradient flows through x and through *both* networks' activations (their parameters are
     frozen for this step): this is what separates SiD from DMD, which treats both predictions as
     constants.
Adam with beta1 = 0, NaN/inf gradients zeroed, optional EMA. LSG (long and short classifier-free
guidance): one guidance scale for the teacher, for training the fake score and for evaluating it.

Bad input fails in `setup`, before any step; checkpoints are atomic and `--resume latest` continues.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional

import torch
from accelerate import Accelerator

from stepdistill import losses
from stepdistill.config import load_config
from stepdistill.denoiser import CFGDenoiser, native_loss_weight
from stepdistill.schedules import DiscreteRange, KarrasRamp, LogNormalSigma, UniformTime
from stepdistill.training import (DataConfig, Draw, EvalConfig, ExportConfig, LRSchedule, Roles, TrainConfig, begin,
                                  finish, make_ema, make_optimizer, optimizer_step, save_samples, setup_data, start,
                                  train_loop)
from stepdistill.trio import make_fake_score, make_generator, make_real_score, trainable


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
    alpha: float = 1.2  # SiD Eq. 23 (1.2 in the paper; 1.0 for AFHQ and SiD-LSG)
    guidance: float = 1.0  # LSG: teacher, fake-score training and fake-score evaluation alike
    # Generator-loss times: "index", an index drawn from [min_step, max_step) of the levels (SiD-LSG's
    # t ~ U[20, 980) on SD); "karras", SiD's EDM levels (sigma^(1/7) uniform over [0.002, 24.4]).
    time_sampling: Literal["index", "karras"] = "index"
    min_step: float = 0.02
    max_step: float = 0.98
    # Fake-score loss: "native", the teacher's own parameterisation with uniform times (how a VP teacher
    # was trained; SiD-LSG's eps-MSE), or "edm", EDM's lambda(sigma) with lognormal levels (SiD on EDM
    # teachers). On the v-prediction digits teacher native scored FD 0.220 vs 0.23-0.25 with edm: the
    # lognormal puts <1% of its levels where the generator loss puts a quarter (sigma/alpha > 2.3).
    fake_weighting: Literal["edm", "native"] = "native"
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
    # "linear" / "cosine": both rates decay to zero at train.max_steps (set it to what the time limit allows)
    lr_schedule: LRSchedule = "cosine"


@dataclass
class SiDConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # 1,150 steps: what 2 CPU cores complete in the 11.5-minute limit, so the cosine decay finishes.
    # float32: bf16 autocast made steps 1.2x faster but ended worse (1,479 steps: FD 0.241 vs 0.230); on
    # the trained networks bf16 rounding moves x0_real - x0_fake, the loss's whole signal, by 5-12%.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=1150, output_dir="outputs/sid_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(results="eval/results/sid_digits.json"))
    export: ExportConfig = field(default_factory=ExportConfig)
    resume: Optional[str] = None  # "latest" (in train.output_dir) or a checkpoint folder


@dataclass
class Run(Roles):
    """Everything `setup` builds; the step functions below read it."""

    cfg: SiDConfig
    accelerator: Accelerator
    teacher: object
    schedule: object
    ts: torch.Tensor
    shape: tuple[int, ...]
    conditioner: object
    space: object
    real: CFGDenoiser  # the teacher with LSG guidance
    fake_score: torch.nn.Module  # prepared (DDP-wrapped when distributed)
    generator: torch.nn.Module
    opt_g: torch.optim.Optimizer
    opt_f: torch.optim.Optimizer
    sched_g: object
    sched_f: object
    ema: object
    resume_from: Optional[Path]


def setup(cfg) -> Run:
    """Validate, build the trio, optimisers and data. Every error is raised here, before any step."""
    begin = start(cfg.train, cfg.model.teacher, cfg.resume)
    accelerator, teacher = begin.accelerator, begin.teacher
    ts = torch.tensor(cfg.model.generator_timesteps, dtype=torch.float64)
    if len(ts) != 1 or not 0 < float(ts[0]) <= teacher.schedule.t_max:
        raise ValueError(f"model.generator_timesteps must be one time in (0, {teacher.schedule.t_max}] "
                         f"(a one-step generator); got {list(ts)}")
    if cfg.loss.guidance != 1.0 and teacher.net.config.get("num_class_embeds") is None and cfg.data.prompts is None:
        raise ValueError("loss.guidance != 1 needs a conditional teacher")
    conditioner, space, _ = setup_data(cfg.data, teacher, accelerator.device, need_images=False)
    fake_score = make_fake_score(teacher, gradient_checkpointing=cfg.model.gradient_checkpointing)
    generator = make_generator(teacher, float(ts[0]), gradient_checkpointing=cfg.model.gradient_checkpointing)
    o = cfg.optim
    gen_params = [p for p in generator.parameters() if p.requires_grad]
    decay = dict(warmup_steps=o.warmup_steps, schedule=o.lr_schedule, total_steps=cfg.train.max_steps)
    opt_g, sched_g = make_optimizer(gen_params, lr=o.lr_generator, betas=o.betas, eps=o.eps,
                                    weight_decay=o.weight_decay, **decay)
    opt_f, sched_f = make_optimizer([p for p in fake_score.parameters() if p.requires_grad], lr=o.lr_fake,
                                    betas=o.betas, eps=o.eps, weight_decay=o.weight_decay, **decay)
    generator, fake_score, opt_g, opt_f, sched_g, sched_f = accelerator.prepare(
        generator, fake_score, opt_g, opt_f, sched_g, sched_f)
    ema = make_ema(gen_params, cfg.train.ema_decay, accelerator)
    return Run(cfg, accelerator, teacher, teacher.schedule, ts, begin.shape, conditioner, space,
               CFGDenoiser(make_real_score(teacher), cfg.loss.guidance), fake_score, generator,
               opt_g, opt_f, sched_g, sched_f, ema, begin.resume_from)


def guided(denoiser, scale: float, x_t, t, conditioner, labels):
    """`uncond + scale (cond - uncond)`: one batched call; the conditional prediction alone at scale 1."""
    cond = conditioner.cond(labels)
    return CFGDenoiser(denoiser, scale)(x_t, t, uncond=conditioner.uncond(labels) if scale != 1 else None, **cond)


def update(run: Run, loss: torch.Tensor, module: torch.nn.Module, opt, sched) -> None:
    """One optimiser step on `module`'s trainable weights, NaN/inf gradients zeroed as SiD does."""
    optimizer_step(run.accelerator, loss, [p for p in module.parameters() if p.requires_grad], opt, sched,
                   grad_clip=run.cfg.optim.grad_clip, nan_to_num=True)


def generate(run: Run, draw: Draw) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh samples x = G(z) with their labels, keeping G's graph for the generator step.

    The official SiD loop runs G twice per step (once under no_grad for the fake score); G does not
    change between the two updates, so one forward serves both, as in SwiftBrush's loop: a network
    pass saved per step (5% of a digits step)."""
    labels = draw.labels(run.conditioner)
    return run.generator(draw.randn(*run.shape), **run.conditioner.cond(labels)), labels


def fake_score_step(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Denoising on detached G samples (SiD Eq. 9), with LSG's guidance on the fake score's output."""
    cfg, schedule, conditioner = run.cfg, run.schedule, run.conditioner
    x = x.detach()
    labels = draw.dropped(labels, cfg.data.prompt_dropout)
    if cfg.loss.fake_weighting == "edm":  # EDM Eq. 8: lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2
        t = draw.times(LogNormalSigma(cfg.loss.p_mean, cfg.loss.p_std), schedule)
        weight = native_loss_weight("edm", 1.0, schedule.sigma(t) / schedule.alpha(t))
    else:
        t = draw.times(UniformTime(), schedule)
        weight = native_loss_weight(run.teacher.prediction_type, schedule.alpha(t), schedule.sigma(t))
    x_t = schedule.add_noise(x, draw.randn(*run.shape), t)
    loss = losses.denoising_loss(guided(run.fake_score, cfg.loss.guidance, x_t, t, conditioner, labels), x, weight)
    update(run, loss, run.fake_score, run.opt_f, run.sched_f)
    return {"loss_fake": loss.item()}


GeneratorLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def generator_step(run: Run, draw: Draw, x: torch.Tensor, labels: torch.Tensor,
                   generator_loss: GeneratorLoss) -> dict[str, float]:
    """`generator_loss(x, x0_real, x0_fake, t)` at a noised copy of the G samples x (with their graph);
    gradients reach G through x, x_t and both frozen networks' activations."""
    cfg, schedule, conditioner = run.cfg, run.schedule, run.conditioner
    t = draw.times(KarrasRamp() if cfg.loss.time_sampling == "karras" else
                   DiscreteRange(cfg.loss.min_step, cfg.loss.max_step), schedule)
    x_t = schedule.add_noise(x, draw.randn(*run.shape), t)  # not detached: SiD differentiates through x_t
    fake = run.fake_module  # unwrapped: its weights take no gradient here, so DDP must not wait for them
    with trainable(fake, False):
        x0_real = guided(run.real.denoiser, cfg.loss.guidance, x_t, t, conditioner, labels)
        x0_fake = guided(fake, cfg.loss.guidance, x_t, t, conditioner, labels)
        loss = generator_loss(x, x0_real, x0_fake, t)
        update(run, loss, run.generator, run.opt_g, run.sched_g)
    if run.ema is not None:
        run.ema.step([p for p in run.generator.parameters() if p.requires_grad])
    return {"loss_g": loss.item()}


def main(cfg: SiDConfig, *, name: str = "sid", generator_loss: GeneratorLoss | None = None) -> dict | None:
    start_time = time.time()
    run = setup(cfg)
    generator_loss = generator_loss or (lambda x, x0_real, x0_fake, t: losses.sid_loss(x, x0_real, x0_fake,
                                                                                     cfg.loss.alpha))
    accelerator = run.accelerator
    start_step = begin(accelerator, run.resume_from, cfg)

    # 1. Strict 1:1 alternation: the fake score, then the generator, on one fresh batch of G samples.
    def step_fn(draw: Draw, step: int) -> dict[str, float]:
        x, labels = generate(run, draw)
        return fake_score_step(run, draw, x, labels) | generator_step(run, draw, x, labels, generator_loss)

    steps_done = train_loop(accelerator, cfg.train, name=name, config=cfg, start_step=start_step,
                            start_time=start_time, step_fn=step_fn,
                            save_samples=lambda path: save_samples(run.student(), path, accelerator.device))

    # 2. EMA weights, then the digits benchmark (teacher rows in the same run) and export.
    if run.ema is not None:
        run.ema.copy_to([p for p in run.generator.parameters() if p.requires_grad])
    return finish(name, cfg, accelerator, run.student(), run.teacher, run.real.denoiser, steps_done=steps_done,
                  train_minutes=(time.time() - start_time) / 60)


if __name__ == "__main__":
    main(load_config(SiDConfig))
