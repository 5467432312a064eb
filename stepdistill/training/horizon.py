"""When a run's learning rates finish decaying: `train.max_steps`, or, under a time limit, the step count
that fits it on this machine.

A decay fixed to `max_steps` is cut short wherever the machine is slower than the one the defaults were
set on, and a student whose rates stopped mid-decay scores worse. So the loop times the first steps of a
run with a time limit and fits the horizon to the steps that the rest of the limit holds (never more than
`max_steps`), then refits it as the run goes, later as well as earlier; the schedules below read it. The fit
is recorded in every checkpoint and in the results, and a resumed run keeps it unless it changes max_steps or
the time limit (a time-fitted schedule depends on the clock, so only a run without a time limit resumes
bit-identically to an uninterrupted one).

The learning-rate rule when the horizon moves: a rate still warming up (or constant) simply follows the new
horizon. Moved earlier, a decaying rate follows the new horizon too (it only falls faster). Moved later, a rate
already decaying would rise, so it never does: the decay is re-spread from the rate it has reached, to zero at
the new horizon (the schedule's own shape over the remaining steps). Each later move is kept as an anchor (the
step and the horizon before it) in the checkpoints, so a resumed run computes the same rates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from .sections import LRSchedule

# The loop skips the first steps (allocation, first-call overheads), times the next ones, then fits; 50 is a
# multiple of every usual update ratio (DMD2's generator steps every 5th), so the window's mean is the mean.
SKIP_STEPS = 5
TIMED_STEPS = 50
# ... and refits every 50 steps from the slower of the mean speed since step 5 and the last 50 steps' (sample
# grids and checkpoints included): earlier when the run has slowed (a step's cost drifted by 12% over a 1-thread
# digits run), later when it has sped up (a 2-core `make demo` ran its first window at 0.73 s a step, then at 0.36).
REFIT_EVERY = 50
# Steps planned into 97% of the remaining time: sample grids and checkpoints are not in the timed window.
MARGIN = 0.97
# A refit moves the horizon later only by at least 2% of it: the margin's slack alone would creep it up by a
# few steps at every refit, each a kink in a decaying rate.
MIN_LENGTHENING = 0.02


@dataclass
class Horizon:
    max_steps: int
    steps: Optional[int] = None  # fitted to the time limit (None: max_steps)
    seconds_per_step: Optional[float] = None  # as timed for the fit
    fitted_at_step: Optional[int] = None
    # Each later move of the horizon: [training step, the horizon before it] (the learning-rate rule above).
    anchors: list[list[int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        """The step at which training ends and decaying learning rates reach zero."""
        return self.max_steps if self.steps is None else self.steps

    @property
    def fitted(self) -> bool:
        return self.steps is not None

    def fit(self, *, done: int, seconds_per_step: float, seconds_left: float) -> int:
        """Fit the horizon to the steps that `seconds_left` hold at `seconds_per_step`, after `done` steps:
        at least one more step, at most `max_steps`. Returns the fitted total."""
        fits = math.floor(MARGIN * max(seconds_left, 0.0) / max(seconds_per_step, 1e-9))
        steps = min(self.max_steps, done + max(fits, 1))
        if self.fitted and self.total < steps < self.total * (1 + MIN_LENGTHENING):
            steps = self.total
        self.move(done, steps)
        self.seconds_per_step = float(seconds_per_step)
        self.fitted_at_step = done
        return self.total

    def move(self, done: int, steps: Optional[int]) -> None:
        """End training at `steps` (None: max_steps) from now on, `done` steps in, anchoring the rates there."""
        new = self.max_steps if steps is None else steps
        if new > self.total:  # moved later: rates decay on from here (moved earlier, they only fall faster)
            self.anchors.append([int(done), self.total])
        self.steps = steps

    def state(self) -> dict:
        return asdict(self)

    def restore(self, state: dict | None, *, done: int = 0, refit: bool = False) -> None:
        """Take a checkpoint's horizon. `refit` (the resumed run changed max_steps or the time limit): keep its
        anchors and move it, `done` steps in, to max_steps, to be fitted anew under a time limit."""
        if not state:
            return
        self.anchors = [list(a) for a in state.get("anchors", [])]
        saved = state.get("steps")
        if refit:
            self.steps = saved if saved is not None else int(state.get("max_steps", self.max_steps))
            self.move(done, None)
        elif saved is not None:
            self.steps = min(int(saved), self.max_steps)
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


def lr_factor(schedule: LRSchedule, *, warmup_steps: int, total_steps: Callable[[], int],
              anchors: Callable[[], list] = list) -> Callable[[int], float]:
    """The learning-rate multiplier at an optimiser's step `k`: a linear warm-up over `warmup_steps`, then
    constant, or a linear / cosine decay reaching zero at `total_steps()` (diffusers' `get_scheduler` formulas,
    whose horizon is fixed at creation), read at every step so that a moved horizon takes effect. `anchors()`:
    [step, horizon before] of each move, in this optimiser's steps; from an anchor inside the decay, the rate
    decays from the value it had there to zero at the next horizon (never rising)."""

    def shape(progress: float) -> float:
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

    def decay(k: int, anchor: tuple[int, float] | None, total: int) -> float:
        if anchor is None:  # from the end of the warm-up
            return shape((k - warmup_steps) / max(1, total - warmup_steps))
        start, value = anchor  # from the rate reached at a move
        return value * shape((k - start) / max(1, total - start))

    def factor(k: int) -> float:
        if k < warmup_steps:
            return k / max(1, warmup_steps)
        if schedule == "constant":
            return 1.0
        moves = anchors()
        totals = [before for _, before in moves] + [total_steps()]
        anchor = None
        for i, (at, _) in enumerate(moves):
            if at > k:
                return decay(k, anchor, totals[i])
            if at > warmup_steps:  # moved inside the decay: re-spread from the rate reached there
                anchor = (at, decay(at, anchor, totals[i]))
        return decay(k, anchor, totals[-1])

    return factor
