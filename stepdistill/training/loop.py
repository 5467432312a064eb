"""The step loop every recipe runs: progress bar, jsonl logs and trackers, sample grids, atomic
checkpoints (with the student's weights), and a wall-clock limit after which the run still evaluates
and exports."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..checkpointing import checkpoint_dirs, save_checkpoint
from ..ops import fused_losses_record
from ..sharding import all_optimizers
from .draw import Draw
from .horizon import FitClock, Horizon
from .meters import optimizer_scalars, peak_memory_mib
from .sections import TrainConfig

StepFn = Callable[[Draw, int], dict]  # (draw, step) -> logs; one optimisation step of the recipe


class DivergenceError(RuntimeError):
    """Training produced non-finite losses or weights; the run stops and keeps its last good checkpoint."""


def nonfinite(values) -> list[str]:
    """The names of the non-finite entries of a dict of floats or tensors."""
    bad = []
    for name, v in values.items():
        finite = bool(torch.isfinite(v).all()) if torch.is_tensor(v) else not isinstance(v, float) or math.isfinite(v)
        if not finite:
            bad.append(name)
    return bad


class Preempted(SystemExit):
    """SIGTERM / SIGINT reached the run: the step in progress finished, a checkpoint was written, and the
    process exits with 128 + the signal number (143 for SIGTERM), as shells and schedulers expect."""


class _Signals:
    """Records SIGTERM / SIGINT instead of dying at once, for the loop to stop at the end of its step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _diverged(output_dir: Path, step: int, what: str) -> DivergenceError:
    good = checkpoint_dirs(output_dir)
    where = f"the last good checkpoint is {good[-1]} (continue from it with resume=latest)" if good else \
        "no checkpoint was written before it"
    return DivergenceError(f"training diverged at step {step}: {what}; {where}. Lower the learning rates "
                           f"(optim.lr_*) or the guidance scales, or raise warm-up steps")


def log_images(accelerator: Accelerator, images: dict[str, torch.Tensor], *, step: int) -> None:
    """(3, H, W) images in [0, 1] to every tracker that takes images (TensorBoard, W&B; called on the main process,
    where accelerate keeps the trackers)."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({k: v[None] for k, v in images.items()}, step=step)  # add_images: NCHW
        elif tracker.name == "wandb":
            tracker.log_images({k: [v.permute(1, 2, 0).numpy()] for k, v in images.items()}, step=step)


def train_loop(accelerator: Accelerator, train: TrainConfig, *, name: str, start_step: int, start_time: float,
               step_fn: StepFn, save_samples: Callable[[Path], torch.Tensor | None],
               student_weights: Callable[[], dict] | None = None, student_record: Callable[[], str] | None = None,
               config: dict | None = None,
               decaying: bool = False, horizon: Horizon | None = None) -> int:
    """Run `step_fn` from `start_step` to the horizon (`train.max_steps`, or the steps that fit the time
    limit: see `horizon`), or until the time limit; returns the number of completed steps.
    `save_samples(path)` is called on every process every `sample_every` (it writes on the main one, and returns the
    grid there, which goes to the trackers as an image);
    `student_weights()` is saved with every checkpoint, beside `student_record()` (its student.json), and `config` (the run's, as a dict) too
    and to the trackers. `decaying`: the learning rates decay over the horizon, so a time limit that cuts the run
    short warns."""
    out = Path(train.output_dir)
    horizon = horizon or Horizon(train.max_steps)
    accelerator.init_trackers(train.project or name, config=tracker_config(config or {}),
                              init_kwargs={"wandb": {"name": train.run_name or out.name}})
    bar = tqdm(range(start_step, train.max_steps), initial=start_step, total=horizon.total,
               desc=name, disable=not accelerator.is_main_process)
    # Fit the horizon to the time limit from this run's speed (a resumed run keeps its checkpoint's).
    clock = FitClock(start_step, enabled=train.time_limit_minutes is not None and not horizon.fitted)
    done, shown, bad_steps = start_step, {}, 0
    step_seconds, timed = 0.0, 0  # the steps' own time since the last log (not sampling nor checkpoints)
    with _Signals() as signals, (out / f"log_rank{accelerator.process_index}.jsonl").open("a") as log_file:
        for step in bar:
            clock.step_starts(step, time.time())
            draw = Draw(accelerator, train.batch_size, train.seed, step, passes=train.passes(accelerator.num_processes))
            began = time.time()
            logs = step_fn(draw, step)
            step_seconds, timed = step_seconds + time.time() - began, timed + 1
            meters = {}
            if (step + 1) % train.log_every == 0:  # rates, gradient norms, speed and memory (`meters`)
                meters = {**optimizer_scalars(all_optimizers(accelerator)),
                          **({"images_per_second": train.batch_size * timed / step_seconds} if step_seconds > 0 else {}),
                          "peak_memory_mib": peak_memory_mib(accelerator.device)}
                step_seconds, timed = 0.0, 0
            log_file.write(json.dumps({"step": step, **logs, **meters}) + "\n")
            bad = nonfinite(logs)
            out_of_time = (train.time_limit_minutes is not None
                           and time.time() - start_time > 60 * train.time_limit_minutes)
            # One collective a step: every process takes the same decisions (any process's non-finite loss,
            # clock or signal counts for all).
            flags = accelerator.reduce(torch.tensor([float(bool(bad)), float(out_of_time),
                                                     float(signals.received or 0)], device=accelerator.device), "sum")
            any_bad, out_of_time, signalled = (float(f) for f in flags)
            bad_steps = bad_steps + 1 if any_bad > 0 else 0
            if bad_steps >= train.max_nonfinite_steps:
                log_file.flush()
                raise _diverged(out, step, f"non-finite {', '.join(bad) or 'loss on another process'} for "
                                           f"{bad_steps} consecutive steps")
            shown |= logs | meters
            done = step + 1
            if clock.due(done, horizon):
                now, first = time.time(), clock.last_fit is None
                _fit(accelerator, horizon, train, done=done, seconds_per_step=clock.seconds_per_step(done, now),
                     now=now, start_time=start_time, first=first)
                log_file.write(json.dumps({"horizon": horizon.state()}) + "\n")
                bar.total = horizon.total
                bar.refresh()
            if done % train.log_every == 0:
                log_file.flush()
                bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items() if k not in meters})  # the losses
                accelerator.log(shown, step=done)
            if done % train.sample_every == 0:  # every process: a sharded student samples on all of them
                grid = save_samples(out / "samples" / f"step_{done:08d}.png")
                if grid is not None:
                    log_images(accelerator, {"samples": grid}, step=done)
            out_of_time = out_of_time > 0
            stop_signal = (signals.received or int(signal.SIGTERM)) if signalled > 0 else 0
            reached = done >= horizon.total
            if done % train.checkpoint_every == 0 or reached or out_of_time or stop_signal:
                weights = student_weights() if student_weights is not None else None
                broken = nonfinite(weights) if weights is not None else []
                if broken:  # never write (nor prune over) a broken one
                    raise _diverged(out, step, f"non-finite student weights ({broken[0]}, ...)")
                save_checkpoint(accelerator, out, done, keep=train.keep_checkpoints,
                                student=weights if accelerator.is_main_process else None,
                                info={"horizon": horizon.state(), "recipe": name,
                                      "fused_losses": fused_losses_record()}, config=config,
                                record=student_record() if student_record and accelerator.is_main_process else None)
            if stop_signal:
                log_file.flush()
                name = signal.Signals(stop_signal).name
                if accelerator.is_main_process:
                    print(f"\n{name}: stopped after step {done} and wrote a checkpoint; continue with the same "
                          f"command plus resume=latest", flush=True)
                raise Preempted(128 + stop_signal)
            if reached:
                break
            if out_of_time:
                if decaying and accelerator.is_main_process:
                    warnings.warn(_stopped_early(train, horizon, done, start_step), stacklevel=2)
                break
    return done


def tracker_config(config: dict) -> dict[str, int | float | str | bool]:
    """The run's config as the trackers' hyperparameters: one dotted key per setting (`train.max_steps`), numbers
    and flags as they are (TensorBoard's hparams and W&B compare runs on them), anything else as text."""
    from .resume import flatten

    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}


def _fit(accelerator: Accelerator, horizon: Horizon, train: TrainConfig, *, done: int, seconds_per_step: float,
         now: float, start_time: float, first: bool) -> None:
    """Fit `horizon` to the time limit left at `now`; every process takes the slowest one's figures."""
    mine = torch.tensor([[seconds_per_step, -(60 * train.time_limit_minutes - (now - start_time))]],
                        device=accelerator.device)
    seconds_per_step, neg_left = (float(v) for v in accelerator.gather(mine).amax(dim=0))
    total = horizon.fit(done=done, seconds_per_step=seconds_per_step, seconds_left=-neg_left)
    if first and total < train.max_steps and accelerator.is_main_process:
        print(f"\n{seconds_per_step:.2f} s a step: the {train.time_limit_minutes:g}-minute limit "
              f"fits {total} of train.max_steps={train.max_steps} steps, so training ends (and decaying "
              f"learning rates reach zero) at step {total}", flush=True)


def _stopped_early(train: TrainConfig, horizon: Horizon, done: int, start_step: int) -> str:
    # The horizon was fitted to the limit from the first steps' speed; the machine then slowed down (or the
    # run started too late to fit one), so the limit cut the decay short and the student scores worse.
    fits = done - start_step  # the steps this process ran within the limit
    return (f"the {train.time_limit_minutes:g}-minute limit stopped training at step {done} of {horizon.total} "
            f"({fits} in this run): the learning-rate decay did not finish. Continue with resume=latest "
            f"(the same schedule), or raise train.time_limit_minutes (null: no limit).")
