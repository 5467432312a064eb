"""What every distillation recipe shares, so a recipe file holds only its method.

- `sections`: the config sections common to the recipes (train, data, eval, export) and `RecipeConfig`;
- `draw`: global-batch randomness sliced per process (one and N processes see the same data);
- `setup`: `Setup` (accelerator, teacher, conditioning, sample space, real data, resume point), optimisers,
  EMA, `trainable_params`;
- `loop`: the step loop (progress, logs, sample grids, atomic checkpoints, time limit);
- `horizon`: where training ends and decaying learning rates reach zero, fitted to the time limit;
- `final`: sample grids, the benchmark that applies and the export at the end of a run;
- `benchmarks`: the end-of-run benchmarks (`Benchmark`: digits, SR patches);
- `recipe`: the `Recipe` protocol and `run_recipe`, which drives one;
- `implicit`: the fake-score / generator alternation SiD and SIM share;
- `dmd`: distribution matching with a GAN, the steps DMD2 and multi-student distillation share.
"""

from . import dmd, implicit
from .draw import Draw
from .benchmarks import evaluate_on_digits
from .final import finish, save_samples
from .loop import train_loop
from .recipe import Recipe, cli, decays, run_recipe
from .sections import EMBEDDED_MINUTES, DataConfig, EvalConfig, ExportConfig, LRSchedule, RecipeConfig, TrainConfig
from .setup import (Setup, accumulate, check_optim, check_step_range, make_ema, make_optimizer, one_step_timesteps,
                    optimizer_step, restore, setup_data, single_network_step, trainable_params, update)

__all__ = ["dmd", "implicit", "EMBEDDED_MINUTES", "DataConfig", "Draw", "EvalConfig", "ExportConfig", "LRSchedule",
           "Recipe", "RecipeConfig", "Setup", "TrainConfig", "accumulate", "check_optim", "check_step_range", "cli",
           "decays", "evaluate_on_digits", "finish", "make_ema", "make_optimizer", "one_step_timesteps",
           "optimizer_step", "restore", "run_recipe", "save_samples", "setup_data", "single_network_step", "train_loop",
           "trainable_params",
           "update"]
