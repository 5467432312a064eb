"""SiD: Score identity Distillation (Zhou et al. 2024, ICML, arXiv:2404.04057), with LSG for
text-to-image (SiD-LSG, Zhou et al. 2024, arXiv:2406.01561).

    accelerate launch recipes/sid.py                                          # digits, 1 step, CPU minutes
    accelerate launch recipes/sid.py --config recipes/configs/sid/tiny_t2i.yaml   # text-to-image smoke test
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/sid.py \
        --config recipes/configs/sid/sd15.yaml data.prompts=PROMPTS.txt

Algorithm (official code `training/sid_training_loop.py`, `training/sid_loss.py`): data-free. A
generator G (initialised from the teacher) maps noise to images in one step; a fake score (a
trainable copy of the teacher) follows G's distribution by denoising G's detached samples. The two
alternate strictly 1:1 on one fresh batch x = G(z) per step (`stepdistill.training.implicit`, the loop
SIM shares):
  1. fake score: denoising loss on sg(x) (SiD Eq. 9);
  2. generator: the SiD loss (Eq. 23) at a noised copy of x,
         (x0_r - x0_f) . ((x0_r - x) - alpha (x0_r - x0_f)) / sg(mean|x - x0_r|),
     whose gradient flows through x and through *both* networks' activations (their parameters are
     frozen for this step): this is what separates SiD from DMD, which treats both predictions as
     constants.
Adam with beta1 = 0, NaN/inf gradients zeroed, optional EMA, LSG guidance.

Bad input fails in `setup`, before any step; checkpoints are atomic and `--resume latest` continues.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from stepdistill import losses
from stepdistill.training import (EMBEDDED_MINUTES, DataConfig, Draw, RecipeConfig, TrainConfig, cli, implicit,
                                  run_recipe)
from stepdistill.training.implicit import ModelConfig, OptimConfig, Run, setup

NAME = "sid"


@dataclass
class LossConfig(implicit.LossConfig):
    alpha: float = 1.2  # SiD Eq. 23 (1.2 in the paper; 1.0 for AFHQ and SiD-LSG)


@dataclass
class SiDConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # 1,150 steps: what 2 CPU cores complete in the 11.5-minute limit, so the cosine decay finishes.
    # float32: bf16 autocast made steps 1.2x faster but ended worse (1,479 steps: FD 0.241 vs 0.230); on
    # the trained networks bf16 rounding moves x0_real - x0_fake, the loss's whole signal, by 5-12%.
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=1150, output_dir="outputs/sid_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))


__all__ = ["NAME", "SiDConfig", "LossConfig", "setup", "generator_loss", "step", "students", "main"]


def generator_loss(run: Run) -> implicit.GeneratorLoss:
    """SiD Eq. 23 with the run's alpha (fused Triton kernel on CUDA)."""
    return lambda x, x0_real, x0_fake, t: losses.sid_loss(x, x0_real, x0_fake, run.cfg.loss.alpha)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    # The fake score denoises sg(G(z)); the generator descends the SiD loss through both networks.
    return implicit.alternate(run, draw, generator_loss(run))


def students(run: Run) -> list:
    return [implicit.student(run, NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg) -> list:
    """The teacher, the fake score and the generator of `implicit.setup` (`plan.implicit_roles`): the generator
    loss backpropagates through both scores' activations."""
    from stepdistill.training.plan import implicit_roles

    return implicit_roles(cfg)


def main(cfg: SiDConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], SiDConfig)
