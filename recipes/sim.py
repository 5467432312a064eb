"""SIM: Score Implicit Matching (Luo et al. 2024, NeurIPS, arXiv:2410.16794), one-step, data-free.

    accelerate launch recipes/sim.py                                          # digits, 1 step, CPU minutes
    accelerate launch recipes/sim.py --config recipes/configs/sim/tiny_t2i.yaml   # text-to-image smoke test

SIM minimises a general score divergence E[d(s_real(x_t) - s_fake(x_t))] between the teacher's
score and the generator's; its gradient theorem (Sec. 3) turns it into a loss that, like SiD's,
needs only the teacher, an online fake score and gradients through both networks' activations.
SiD is SIM with the squared distance; here d is the pseudo-Huber distance
d(y) = sqrt(||y||^2 + c^2) - c, whose derivative y / sqrt(||y||^2 + c^2) normalises each sample's
signal (see `stepdistill.losses.sim_loss` for the units of y and c, and for the sign, which a test on
the exact 2-D teacher pins: no official training code exists).

The training loop is the one SiD uses (`stepdistill.training.implicit`: strict 1:1 alternation, fake-score
denoising, Adam beta1 = 0, NaN-safe gradients, EMA, LSG guidance); only the generator loss differs.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional

from stepdistill import losses
from stepdistill.training import (EMBEDDED_MINUTES, DataConfig, Draw, RecipeConfig, TrainConfig, cli, implicit,
                                  run_recipe)
from stepdistill.training.implicit import ModelConfig, OptimConfig, Run, setup

NAME = "sim"


@dataclass
class LossConfig(implicit.LossConfig):
    # Pseudo-Huber c in x0 units over a whole sample; None: iCT's 0.00054 sqrt(d), d = elements per sample.
    c: Optional[float] = None
    # Per-sample weight: "none", or "sid": SiD's detached 1 / mean|x - x0_real| (Eq. 23's omega), which
    # weights low noise levels up (omega grows with t) as SiD does.
    weighting: Literal["none", "sid"] = "none"
    # "on_policy": the loss the paper writes, u . (x0_real - x) with u = d'(x0_real - x0_fake) inside the
    # gradient; "fixed_direction": sg(u) . (x0_fake - x), the score-gradient theorem with the direction
    # held fixed (`losses.sim_fixed_direction_loss`). Same leading gradient, same stationary point.
    form: Literal["on_policy", "fixed_direction"] = "on_policy"


@dataclass
class SIMConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=1100, output_dir="outputs/sim_digits"))
    data: DataConfig = field(default_factory=lambda: DataConfig(prompt_dropout=0.0))


__all__ = ["NAME", "SIMConfig", "LossConfig", "setup", "make_generator_loss", "step", "students", "main"]


def make_generator_loss(loss: LossConfig) -> implicit.GeneratorLoss:
    """SIM's loss (pseudo-Huber distance) under `loss`'s c and weighting, in the loop's generator-loss slot."""
    def generator_loss(x, x0_real, x0_fake, t):
        c = loss.c if loss.c is not None else 0.00054 * math.sqrt(x[0].numel())
        weight = None
        if loss.weighting == "sid":  # SiD Eq. 23's omega, detached
            weight = 1 / losses.sid_normaliser(x, x0_real)
        sim = losses.sim_loss if loss.form == "on_policy" else losses.sim_fixed_direction_loss
        return sim(x, x0_real, x0_fake, c, weight=weight)

    return generator_loss


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    # The fake score denoises sg(G(z)); the generator descends SIM's loss through both networks.
    return implicit.alternate(run, draw, make_generator_loss(run.cfg.loss))


def students(run: Run) -> list:
    return [implicit.student(run, NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg) -> list:
    """The teacher, the fake score and the generator of `implicit.setup` (`plan.implicit_roles`): the generator
    loss backpropagates through both scores' activations."""
    from stepdistill.training.plan import implicit_roles

    return implicit_roles(cfg)


def main(cfg: SIMConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], SIMConfig)
