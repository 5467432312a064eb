"""What every distillation recipe shares, so a recipe file holds only its method.

- `sections`: the config sections common to the recipes (train, data, eval, export);
- `draw`: global-batch randomness sliced per process (one and N processes see the same data);
- `setup`: accelerator, teacher, conditioning and real data, optimisers, EMA;
- `loop`: the step loop (progress, logs, sample grids, atomic checkpoints, time limit);
- `student`: sampling, evaluating on the digits benchmark and exporting a trained generator.
"""

from .draw import Draw
from .loop import train_loop
from .sections import DataConfig, EvalConfig, ExportConfig, LRSchedule, TrainConfig
from .setup import Start, begin, make_ema, make_optimizer, optimizer_step, setup_data, start
from .student import Roles, Student, evaluate_on_digits, export_student, finish, save_samples

__all__ = ["DataConfig", "Draw", "EvalConfig", "ExportConfig", "LRSchedule", "Roles", "Start", "Student", "TrainConfig", "begin",
           "evaluate_on_digits", "export_student", "finish", "make_ema", "make_optimizer", "optimizer_step",
           "save_samples", "setup_data", "start", "train_loop"]
