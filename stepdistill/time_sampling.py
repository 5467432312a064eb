"""Training-time samplers: where in time a training step draws its noise levels. Each returns native times of
shape (n,) for a `NoiseSchedule`: uniform (shifted for flow schedules), EDM's lognormal sigma, an index range of
the teacher's level table (DMD2's 2%..98%), the teacher's own training levels, and a Karras ramp."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .schedules import EDM, NoiseSchedule, RectifiedFlow, VPDiscrete, karras_sigmas

__all__ = ["UniformTime", "LogNormalSigma", "DiscreteRange", "TeacherLevels", "FakeTimes", "fake_score_times",
           "KarrasRamp"]


@dataclass
class UniformTime:
    """t ~ U[lo, hi] in fractions of the native range [t_min, t_max] (shifted for flow schedules)."""

    lo: float = 0.0
    hi: float = 1.0

    def sample(self, schedule: NoiseSchedule, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        u = self.lo + (self.hi - self.lo) * u
        t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
        if isinstance(schedule, RectifiedFlow):
            t = schedule.shifted(t)
        return t.float()


@dataclass
class LogNormalSigma:
    """log(sigma/alpha) ~ N(p_mean, p_std^2) (EDM's training distribution), clipped to the schedule."""

    p_mean: float = -1.2
    p_std: float = 1.2

    def sample(self, schedule, n, *, generator=None, device="cpu"):
        z = torch.randn(n, generator=generator, device=device, dtype=torch.float64)
        t = schedule.t_from_ratio(torch.exp(self.p_mean + self.p_std * z))
        return t.clamp(schedule.t_min, schedule.t_max).float()


@dataclass
class DiscreteRange:
    """An index drawn uniformly from [lo, hi) fractions of a `num`-level table (DMD2: 2%..98% of 1000).

    The table is the training indices for VP schedules, `num` Karras sigmas for EDM, and `num`
    uniformly spaced (then shifted) times for rectified flow; index 0 is the least noisy.
    """

    lo: float = 0.02
    hi: float = 0.98
    num: int = 1000
    inclusive: bool = False  # also draw index int(hi * num): DMD2's randint(min_step, max_step + 1)

    def table(self, schedule: NoiseSchedule) -> torch.Tensor:
        if isinstance(schedule, VPDiscrete):
            return torch.arange(schedule.num_train_timesteps, dtype=torch.float64)
        if isinstance(schedule, EDM):
            return karras_sigmas(self.num, schedule.sigma_min, schedule.sigma_max, schedule.rho).flip(0)
        if isinstance(schedule, RectifiedFlow):
            return schedule.shifted(torch.linspace(1 / self.num, 1, self.num, dtype=torch.float64))
        raise TypeError(f"no discrete table for {type(schedule).__name__}")

    def sample(self, schedule, n, *, generator=None, device="cpu"):
        table = self.table(schedule)
        lo, hi = int(self.lo * len(table)), max(int(self.hi * len(table)), int(self.lo * len(table)) + 1)
        hi = min(hi + 1, len(table)) if self.inclusive else hi
        idx = torch.randint(lo, hi, (n,), generator=generator, device=device)
        return table.to(device)[idx].float()


@dataclass
class TeacherLevels(DiscreteRange):
    """The noise levels a teacher was trained at, drawn as the official distillation code draws them for
    its fake-score (and LoRA) denoising steps: a training index U{0, T-1} for VP-discrete teachers (DMD2's
    and SwiftBrush's U[0, 1000)), an index into the 1,000-level Karras table for EDM (DMD2's
    `edm_guidance.py`: sigma in [0.002, 80] with rho 7, 40% of draws below sigma 1), and the scheduler's
    shifted times for flow teachers. Queries of a fake score land where it was trained: the
    distribution-matching loss draws from the same tables."""

    lo: float = 0.0
    hi: float = 1.0


# Fake-score / LoRA denoising times: "teacher" (`TeacherLevels`, the official codes'), or "uniform"
# (`UniformTime`: uniform in native time, i.e. uniform in sigma on EDM: 1.3% of draws below sigma 1).
FakeTimes = Literal["teacher", "uniform"]


def fake_score_times(choice: FakeTimes) -> "TeacherLevels | UniformTime":
    """The time sampler a recipe's `loss.fake_times` names."""
    if choice == "teacher":
        return TeacherLevels()
    if choice == "uniform":
        return UniformTime()
    raise ValueError(f"unknown fake-score times {choice!r}; expected 'teacher' or 'uniform'")


@dataclass
class KarrasRamp:
    """sigma/alpha with sigma^(1/rho) uniform from sigma_min^(1/rho) to the point `u_max` of the way to
    sigma_max^(1/rho) (EDM Eq. 5's spacing), clipped to the schedule: SiD's generator-loss levels on EDM
    teachers (official `sid_loss.py`, u_max = tmax / 1000 = 0.8: sigma in [0.002, 24.4])."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    u_max: float = 0.8

    def sample(self, schedule: NoiseSchedule, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
        u = self.u_max * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        inv_min, inv_max = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        t = schedule.t_from_ratio((inv_min + u * (inv_max - inv_min)) ** self.rho)
        return t.clamp(schedule.t_min, schedule.t_max).float()
