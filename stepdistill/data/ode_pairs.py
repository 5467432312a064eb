"""Noise-image pairs from the teacher's ODE solver: the data of DMD's regression loss (Yin et al.
2024a, Sec. 3.3; DMD2 keeps it as the warm start of its one-step SDXL model).

The pairs are a function of the teacher, the data and (seed, count, sampler, NFE, guidance) only: the
noise and labels are drawn for the whole set from one generator, each process solves its share and the
shares are gathered, so one and N processes hold the same pairs. They are written once to the run's
cache (atomically), with all of that as metadata, and read back when it matches (a resume).
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

__all__ = ["ODEPairs", "make_ode_pairs", "solve_in_shares", "load_cached", "save_cached"]


@dataclass
class ODEPairs:
    z: torch.Tensor  # (N, *shape) unit Gaussian noise: the generator's input
    labels: torch.Tensor  # (N,) class ids or prompt indices (the conditioner's labels)
    x: torch.Tensor  # (N, *shape) the teacher's ODE solution from z * the prior's standard deviation

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def make_ode_pairs(denoise, schedule, conditioner, shape: tuple[int, ...], *, n: int, sampler: str, nfe: int,
                   seed: int, accelerator, cache: Path | None = None, identity: dict[str, str] | None = None,
                   batch_size: int = 250) -> ODEPairs:
    """`n` pairs solved with `sampler` at `nfe` evaluations of `denoise` (a `CFGDenoiser`: the
    guidance of the real score). `cache`: a .safetensors file reused when its settings and `identity`
    (the teacher's and the data's, `fingerprints.run_identity`) match."""
    if n < 1:
        raise ValueError(f"the number of ODE pairs must be >= 1, got {n}")
    meta = dict(n=str(n), sampler=sampler, nfe=str(nfe), seed=str(seed), guidance=str(float(denoise.scale)),
                shape=",".join(map(str, shape)), **(identity or {}))
    cached = load_cached(cache, meta, say=accelerator.print)
    if cached is not None:
        return ODEPairs(**{k: v.to(accelerator.device) for k, v in cached.items()})
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, *shape, generator=g)
    labels = conditioner.sample_labels(n, generator=g)
    steps = steps_for_nfe(sampler, nfe)

    def solve(zb, lb):
        den = partial(denoise, uncond=conditioner.uncond(lb), **conditioner.cond(lb))
        return sample(den, schedule, zb * schedule.prior_std(), sampler=sampler, steps=steps).float()

    x = solve_in_shares(solve, z, labels, accelerator, batch_size=batch_size, desc="teacher ODE pairs")
    pairs = ODEPairs(z.to(accelerator.device), labels.to(accelerator.device), x)
    save_cached(cache, meta, {"z": pairs.z, "labels": pairs.labels, "x": pairs.x}, accelerator)
    return pairs


def solve_in_shares(solve, z: torch.Tensor, labels: torch.Tensor, accelerator, *, batch_size: int,
                    desc: str) -> torch.Tensor:
    """`solve(z_batch, labels_batch)` over the whole set, each process its share, gathered in order: every
    process returns the same tensor (on its device) as one process solving everything would."""
    n = len(labels)
    processes, rank = accelerator.num_processes, accelerator.process_index
    per = math.ceil(n / processes)  # every process solves `per` (gather needs equal shares: the last pads)
    mine = torch.arange(rank * per, (rank + 1) * per) % n
    solved = []
    for zb, lb in tqdm(list(zip(z[mine].split(batch_size), labels[mine].split(batch_size))), desc=desc,
                       disable=not accelerator.is_main_process):
        solved.append(solve(zb.to(accelerator.device), lb.to(accelerator.device)))
    return accelerator.gather(torch.cat(solved))[:n]


def load_cached(cache: Path | None, meta: dict[str, str], say=print) -> dict[str, torch.Tensor] | None:
    """The tensors of a .safetensors `cache` written with the same settings `meta`, else None; `say` tells
    why a cache on disk is not used (what differs, or that it is unreadable)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    if cache is None or not cache.is_file():
        return None
    try:
        with safe_open(str(cache), "pt") as f:
            stored = f.metadata() or {}
        if stored == meta:
            return load_file(str(cache))
    except (SafetensorError, OSError, RuntimeError) as e:
        say(f"{cache} is unreadable ({str(e).splitlines()[0][:120]}): solving again")
        return None
    differ = sorted(k for k in stored.keys() | meta.keys() if stored.get(k) != meta.get(k))
    shown = ", ".join(f"{k}: {stored.get(k)} -> {meta.get(k)}" for k in differ[:4])
    say(f"{cache} was solved with other settings ({shown}{', ...' if len(differ) > 4 else ''}): solving again")
    return None


def save_cached(cache: Path | None, meta: dict[str, str], tensors: dict[str, torch.Tensor], accelerator) -> None:
    """Write `tensors` with their settings to `cache` atomically (the main process)."""
    from safetensors.torch import save_file

    if cache is None or not accelerator.is_main_process:
        return
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    save_file({k: v.cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, cache)
