"""The teacher's sampling trajectories on a skip grid: consistency distillation's training states without
real images (MLCM, Xie et al. 2024: "teacher sampling-trajectory states as training data").

Each trajectory starts from sigma(t_max) z and takes the teacher's solver step (DDIM, or Heun on EDM
teachers) from each grid level to the next one down, at the guidance the student is distilled with; every
state is kept. A consistency pair is then two neighbouring states of one trajectory, (x at level i + 1,
x at level i): the teacher's step between them is already taken, so training needs no teacher call.

Like `ode_pairs`, the set is a function of (seed, count, grid, solver, guidance) only: drawn for the whole set
from one generator, solved in shares by the processes and gathered, cached in the run's folder and read back
when the run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from .ode_pairs import load_cached, save_cached, solve_in_shares

__all__ = ["Trajectories", "make_trajectories"]

SolverStep = Callable  # (denoise, schedule, x, t, s) -> x_s: samplers.ddim_step or samplers.heun_step


@dataclass
class Trajectories:
    labels: torch.Tensor  # (N,) class ids or prompt indices
    states: torch.Tensor  # (N, L + 1, *shape): states[:, i] at grid[i] (ascending: states[:, 0] is the end)

    def __len__(self) -> int:
        return len(self.labels)

    def pair(self, which: torch.Tensor, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x at grid[level + 1], x at grid[level]) of trajectories `which`: a state and the teacher's step
        from it one level down."""
        which, level = which.to(self.states.device), level.to(self.states.device)
        return self.states[which, level + 1], self.states[which, level]


@torch.no_grad()
def make_trajectories(denoise, step: SolverStep, schedule, conditioner, shape: tuple[int, ...], grid: torch.Tensor,
                      *, n: int, seed: int, accelerator, cache: Path | None = None,
                      identity: dict[str, str] | None = None, batch_size: int = 250) -> Trajectories:
    """`n` trajectories of `denoise` (a `CFGDenoiser`: the guidance they are solved at) down the ascending
    skip `grid`, each from sigma(grid[-1]) z, with the solver `step`. `cache`: a .safetensors file reused when
    its settings and `identity` (the teacher's and the data's) match."""
    if n < 1:
        raise ValueError(f"the number of teacher trajectories must be >= 1, got {n}")
    meta = dict(n=str(n), seed=str(seed), guidance=str(float(denoise.scale)), solver=step.__name__,
                grid=",".join(f"{float(t):.6g}" for t in grid), shape=",".join(map(str, shape)), **(identity or {}))
    cached = load_cached(cache, meta, say=accelerator.print)
    if cached is not None:
        return Trajectories(**{k: v.to(accelerator.device) for k, v in cached.items()})
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g)
    labels = conditioner.sample_labels(n, generator=g)
    top = float(schedule.sigma(grid[-1:]).item())

    def solve(zb, lb):
        den = partial(denoise, uncond=conditioner.uncond(lb), **conditioner.cond(lb))
        x = zb * top
        states = [x]
        for t, s in zip(grid.flip(0)[:-1], grid.flip(0)[1:]):
            x = step(den, schedule, x, t.expand(len(x)), s.expand(len(x))).float()
            states.append(x)
        return torch.stack(states[::-1], dim=1)  # ascending, as the grid

    states = solve_in_shares(solve, z, labels, accelerator, batch_size=batch_size, desc="teacher trajectories")
    out = Trajectories(labels.to(accelerator.device), states)
    save_cached(cache, meta, {"labels": out.labels, "states": out.states}, accelerator)
    return out
