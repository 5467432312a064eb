"""Consistency-training curricula: which pair of noise levels a step compares, and how that pair tightens
over training.

- iCT (Song & Dhariwal 2023): N + 1 Karras levels, N doubling from s0 to s1 over the run (`ict_levels`);
  the index i is drawn from a discretised lognormal (`ICTPairs`); the pair is (sigma_i, sigma_{i+1}).
- ECT (Geng et al. 2024): continuous t ~ LogNormal(P_mean, P_std) and r(t) = t (1 - q^-(stage+1)
  (1 + k sigmoid(-b t))), so t - r shrinks geometrically stage by stage (`ect_r`).

Formulas re-derived from the public code (diffusers' `train_cm_ct_unconditional.py` for iCT, which has no
official release; `locuslab/ect` `training/loss.py` for ECT) and checked in `tests/test_curricula.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .schedules import karras_sigmas


def ict_levels(step: int, total_steps: int, *, s0: int = 10, s1: int = 1280) -> int:
    """N(k) = min(s0 2^floor(k / K'), s1) + 1 levels at training step k, K' = floor(K / (log2 floor(s1 / s0) + 1))
    (iCT Eq. 7's exponential curriculum)."""
    k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
    return min(s0 * 2 ** math.floor(step / max(k_prime, 1)), s1) + 1


@dataclass
class ICTPairs:
    """Adjacent Karras levels (sigma_i, sigma_{i+1}) of an N-level grid, i drawn with iCT's discretised
    lognormal: p(i) proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std)) - erf((ln sigma_i - P_mean) /
    (sqrt(2) P_std))."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    p_mean: float = -1.1
    p_std: float = 2.0

    def grid(self, levels: int) -> torch.Tensor:
        """The N levels, ascending (sigma_0 = sigma_min)."""
        return karras_sigmas(levels, self.sigma_min, self.sigma_max, self.rho).flip(0).double()

    def probabilities(self, levels: int) -> torch.Tensor:
        """p(i), i = 0 .. N - 2."""
        log_sigma = self.grid(levels).log()
        cdf = torch.erf((log_sigma - self.p_mean) / (math.sqrt(2.0) * self.p_std))
        p = cdf[1:] - cdf[:-1]
        return p / p.sum()

    def sample(self, levels: int, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma_i, sigma_{i+1}), each of shape (n,), float32."""
        idx = torch.multinomial(self.probabilities(levels), n, replacement=True, generator=generator)
        grid = self.grid(levels)
        return grid[idx].float().to(device), grid[idx + 1].float().to(device)


def ect_r(t: torch.Tensor, stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """ECT's r(t) = t (1 - q^-(stage+1) (1 + k sigmoid(-b t))), clamped at 0: the comparison point below t,
    moving towards t by a factor q each stage."""
    t64 = t.double()
    r = t64 * (1 - q ** -(stage + 1) * (1 + k * torch.sigmoid(-b * t64)))
    return r.clamp_min(0).to(t.dtype)


def skip_grid(schedule, levels: int) -> torch.Tensor:
    """Consistency distillation's grid of `levels` noise levels above the boundary, as native times, ascending,
    the boundary first (float64, levels + 1 entries). VP-discrete teachers: LCM's skipping-step grid
    {0, k - 1, 2k - 1, ..., N - 1} with k = N / levels (50 levels of 1,000: {0, 19, 39, ..., 999}, diffusers'
    `DDIMSolver`); other schedules: Karras levels from t_min (sigma_min, the consistency boundary) to t_max,
    as the official CD code's N = 40 grid."""
    from .schedules import VPDiscrete

    if levels < 1:
        raise ValueError(f"the skip grid needs >= 1 level, got {levels}")
    if isinstance(schedule, VPDiscrete):
        n = schedule.num_train_timesteps
        if levels > n or n % levels:
            raise ValueError(f"{levels} levels do not divide the teacher's {n} training timesteps evenly "
                             "(LCM's skipping step k = N / levels)")
        k = n // levels
        return torch.cat([torch.zeros(1, dtype=torch.float64),
                          torch.arange(1, levels + 1, dtype=torch.float64) * k - 1])
    r_min = float(schedule.ratio(torch.tensor(schedule.t_min, dtype=torch.float64)))
    r_max = float(schedule.ratio(torch.tensor(schedule.t_max, dtype=torch.float64)))
    return schedule.t_from_ratio(karras_sigmas(levels + 1, r_min, r_max).flip(0)).to(torch.float64)


def segment_edges(grid: torch.Tensor, segments: int) -> torch.Tensor:
    """The edges of `segments` multistep-consistency segments on a skip grid (ascending, boundary first):
    descending times from the top level to the boundary, the i-th at grid position L - floor(i L / S) of the L
    levels, the positions LCMScheduler would sample in S steps (8 segments of LCM's 50 levels: 999, 879, 759,
    ..., 139, 0). Counts that divide each other nest (the 4-segment edges are among the 8-segment ones), so
    progressive training towards fewer segments keeps every earlier edge a point of the trajectory."""
    levels = len(grid) - 1
    if not 1 <= segments <= levels:
        raise ValueError(f"segments={segments} must lie in [1, {levels}] (the skip grid's levels)")
    desc = grid.flip(0)[:-1]  # levels, top first
    picked = desc[(torch.arange(segments) * levels) // segments]
    return torch.cat([picked, grid[:1]])
