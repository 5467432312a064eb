"""DMD2: improved distribution matching distillation (Yin et al. 2024, arXiv:2405.14867).

    accelerate launch recipes/dmd2.py                                        # digits, 1 step, CPU minutes
    accelerate launch recipes/dmd2.py --config recipes/configs/dmd2/sd15.yaml   # a real model
    accelerate launch --multi_gpu --num_processes 2 recipes/dmd2.py train.max_steps=20
    accelerate launch recipes/dmd2.py --resume latest                        # after preemption

Algorithm (paper Sec. 4, official code `train_sd.py`): the fake score denoises the generator's samples every
step, the GAN head on its bottleneck trains beside it, and every `update_ratio` steps the generator follows the
distribution-matching gradient plus the GAN loss; multistep generators train on their own samples.

The steps live in `stepdistill.training.dmd`, which multi-student distillation (`recipes/msd.py`) shares:
`setup` builds the trio, `step` runs the fake-score and (every `update_ratio` steps) the generator update.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from stepdistill.student import Student
from stepdistill.training import EMBEDDED_MINUTES, RecipeConfig, TrainConfig, cli, run_recipe
from stepdistill.training.dmd import LossConfig, ModelConfig, OptimConfig, Run, setup, step  # noqa: F401 (the recipe)

NAME = "dmd2"


@dataclass
class DMD2Config(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # 1,600 steps: what a fast 2-core machine completes in the 11.5-minute limit; a slower one fits the decay
    # to the steps its limit holds (stepdistill.training.horizon).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=1600, output_dir="outputs/dmd2_digits"))


def students(run: Run) -> list[Student]:
    return [Student.from_setup(run.setup, generator=run.generator, timesteps=run.ts, ema=run.ema, name=NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: DMD2Config) -> list:
    """The frozen teacher (the real score runs under no_grad: no pass backpropagates through it), then DMD's trio
    (`plan.dmd_roles`, mirroring `dmd.build`): the fake score, the generator and the GAN head."""
    from stepdistill.training.plan import PlannedRole, dmd_roles

    return [PlannedRole.teacher(), *dmd_roles(cfg)]


def main(cfg: DMD2Config) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], DMD2Config)
