"""Noise-image pairs from the teacher's ODE solver: the data of DMD's regression loss (Yin et al.
2024a, Sec. 3.3; DMD2 keeps it as the warm start of its one-step SDXL model).

The pairs are a function of (seed, count, sampler, NFE, guidance) only: the noise and labels are
drawn for the whole set from one generator, each process solves its share and the shares are
gathered, so one and N processes hold the same pairs. They are written once to the run's folder
(atomically) and read back when the run resumes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..samplers import sample, steps_for_nfe

__all__ = ["ODEPairs", "make_ode_pairs"]


@dataclass
class ODEPairs:
    z: torch.Tensor  # (N, *shape) unit Gaussian noise: the generator's input
    labels: torch.Tensor  # (N,) class ids or prompt indices (the conditioner's labels)
    x: torch.Tensor  # (N, *shape) the teacher's ODE solution from z * the prior's standard deviation

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def make_ode_pairs(denoise, schedule, conditioner, shape: tuple[int, ...], *, n: int, sampler: str, nfe: int,
                   seed: int, accelerator, cache: Path | None = None, batch_size: int = 250) -> ODEPairs:
    """`n` pairs solved with `sampler` at `nfe` evaluations of `denoise` (a `CFGDenoiser`: the
    guidance of the real score). `cache`: a .safetensors file reused when its settings match."""
    from safetensors.torch import load_file, save_file

    if n < 1:
        raise ValueError(f"the number of ODE pairs must be >= 1, got {n}")
    meta = dict(n=str(n), sampler=sampler, nfe=str(nfe), seed=str(seed), guidance=str(float(denoise.scale)),
                shape=",".join(map(str, shape)))
    if cache is not None and cache.is_file():
        from safetensors import safe_open

        with safe_open(str(cache), "pt") as f:
            same = f.metadata() == meta
        if same:
            return ODEPairs(**{k: v.to(accelerator.device) for k, v in load_file(str(cache)).items()})

    processes, rank = accelerator.num_processes, accelerator.process_index
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g)
    labels = conditioner.sample_labels(n, generator=g)
    per = math.ceil(n / processes)  # every process solves `per` (gather needs equal shares: the last pads)
    mine = torch.arange(rank * per, (rank + 1) * per) % n
    steps = steps_for_nfe(sampler, nfe)
    solved = []
    for zb, lb in tqdm(list(zip(z[mine].split(batch_size), labels[mine].split(batch_size))),
                       desc="teacher ODE pairs", disable=not accelerator.is_main_process):
        zb, lb = zb.to(accelerator.device), lb.to(accelerator.device)
        den = partial(denoise, uncond=conditioner.uncond(lb), **conditioner.cond(lb))
        solved.append(sample(den, schedule, zb * schedule.prior_std(), sampler=sampler, steps=steps).float())
    x = accelerator.gather(torch.cat(solved))[:n]
    pairs = ODEPairs(z.to(accelerator.device), labels.to(accelerator.device), x)
    if cache is not None and accelerator.is_main_process:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        save_file({"z": pairs.z.cpu().contiguous(), "labels": pairs.labels.cpu().contiguous(),
                   "x": pairs.x.cpu().contiguous()}, str(tmp), metadata=meta)
        os.replace(tmp, cache)
    return pairs
