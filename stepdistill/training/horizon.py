"""When a run's learning rates finish decaying: `train.max_steps`, or, under a time limit, the step count
that fits it on this machine.

A decay fixed to `max_steps` is cut short wherever the machine is slower than the one the defaults were
set on, and a student whose rates stopped mid-decay scores worse. So the loop times the first steps of a
run with a time limit and fits the horizon to the steps that the rest of the limit holds (never more than
`max_steps`), then refits it as the run goes; the schedules below read it. The fit is recorded in every
checkpoint and in the results, and a resumed run keeps it (a time-fitted schedule depends on the clock,
so only a run without a time limit resumes bit-identically to an uninterrupted one).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Optional

from .sections import LRSchedule

# The loop skips the first steps (allocation, first-call overheads), times the next ones, then fits; 50 is a
# multiple of every usual update ratio (DMD2's generator steps every 5th), so the window's mean is the mean.
SKIP_STEPS = 5
TIMED_STEPS = 50
# ... and refits every 50 steps from the slower of the mean speed since step 5 and the last 50 steps' (sample
# grids and checkpoints included), moving the horizon earlier when the run has slowed (a step's cost drifted
# by 12% over a 1-thread digits run), never later: a decaying rate never rises again.
REFIT_EVERY = 50
# Steps planned into 97% of the remaining time: sample grids and checkpoints are not in the timed window.
MARGIN = 0.97


@dataclass
class Horizon:
    max_steps: int
    steps: Optional[int] = None  # fitted to the time limit (None: max_steps)
    seconds_per_step: Optional[float] = None  # as timed for the fit
    fitted_at_step: Optional[int] = None

    @property
    def total(self) -> int:
        """The step at which training ends and decaying learning rates reach zero."""
        return self.max_steps if self.steps is None else self.steps

    @property
    def fitted(self) -> bool:
        return self.steps is not None

    def fit(self, *, done: int, seconds_per_step: float, seconds_left: float, shorten_only: bool = False) -> int:
        """Fit the horizon to the steps that `seconds_left` hold at `seconds_per_step`, after `done` steps;
        at least one more step, at most `max_steps`; `shorten_only` (a refit): never later than the current
        horizon, so decaying rates never rise again. Returns the fitted total."""
        fits = math.floor(MARGIN * max(seconds_left, 0.0) / max(seconds_per_step, 1e-9))
        steps = min(self.max_steps, done + max(fits, 1))
        self.steps = min(steps, self.total) if shorten_only else steps
        self.seconds_per_step = float(seconds_per_step)
        self.fitted_at_step = done
        return self.steps

    def state(self) -> dict:
        return asdict(self)

    def restore(self, state: dict | None) -> None:
        """Take a checkpoint's fitted horizon (a run resumed with another max_steps keeps the larger bound)."""
        if state and state.get("steps") is not None:
            self.steps = min(int(state["steps"]), self.max_steps)
            self.seconds_per_step = state.get("seconds_per_step")
            self.fitted_at_step = state.get("fitted_at_step")


class FitClock:
    """When the loop (re)fits a horizon and at what speed: steps SKIP_STEPS.. are timed from the run's
    `start_step`; the first fit comes TIMED_STEPS steps later, then one every REFIT_EVERY steps, each at the
    slower of the mean speed so far and the last window's (a slowdown shows at once). Disabled (never due)
    without a time limit or when a resumed run already holds a fitted horizon."""

    def __init__(self, start_step: int, *, enabled: bool):
        self.start_step = start_step
        self.first_at = start_step + SKIP_STEPS + TIMED_STEPS if enabled else None
        self.timed_from: Optional[float] = None
        self.last_fit: Optional[float] = None

    def step_starts(self, step: int, now: float) -> None:
        if step == self.start_step + SKIP_STEPS:
            self.timed_from = now

    def due(self, done: int, horizon: Horizon) -> bool:
        return (self.first_at is not None and done >= self.first_at and (done - self.first_at) % REFIT_EVERY == 0
                and done < horizon.total)

    def seconds_per_step(self, done: int, now: float) -> float:
        """The speed to fit with at `now`, after `done` steps; marks this as the last fit."""
        speeds = [(now - self.timed_from) / (done - self.start_step - SKIP_STEPS)]
        if self.last_fit is not None:
            speeds.append((now - self.last_fit) / REFIT_EVERY)
        self.last_fit = now
        return max(speeds)


def lr_factor(schedule: LRSchedule, *, warmup_steps: int, total_steps: Callable[[], int]) -> Callable[[int], float]:
    """The learning-rate multiplier at an optimiser's step `k`: a linear warm-up over `warmup_steps`, then
    constant, or a linear / cosine decay reaching zero at `total_steps()`, read at every step so that a
    fitted horizon takes effect (diffusers' `get_scheduler` formulas, whose horizon is fixed at creation)."""

    def factor(k: int) -> float:
        if k < warmup_steps:
            return k / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        progress = (k - warmup_steps) / max(1, total_steps() - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    return factor
