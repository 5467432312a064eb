"""What a run logs beside its losses (`loop.train_loop`, at every `train.log_every` step, to the jsonl log and the
trackers): each optimiser's learning rate and last gradient norm (`lr_<name>`, `grad_norm_<name>`), the images a
second the run trains on (`images_per_second`: the global batch over the step's seconds) and the peak memory of
the process (`peak_memory_mib`: the GPU's allocated peak, else the resident set's).
"""

from __future__ import annotations

import resource
import sys
import weakref

import torch

from ..sharding import full

# optimiser -> [name, last gradient norm (a tensor: read only when logged, no sync at every update)]
_METERS: weakref.WeakKeyDictionary[torch.optim.Optimizer, list] = weakref.WeakKeyDictionary()


def name_optimizer(optimizer: torch.optim.Optimizer, name: str) -> None:
    """The name its scalars are logged under (`make_optimizer(name=...)`: the role it trains)."""
    _METERS[optimizer] = [name, None]


def record_grad_norm(optimizer, norm: torch.Tensor) -> None:
    """The total gradient norm of its last update (before clipping), for the next log."""
    meter = _METERS.get(getattr(optimizer, "optimizer", optimizer))
    if meter is not None:
        meter[1] = norm.detach()


def optimizer_scalars(optimizers) -> dict[str, float]:
    """`lr_<name>` and `grad_norm_<name>` of each named optimiser (accelerate's wrappers or torch's); a name met
    again (multi-student distillation's K generators) takes its index, `lr_generator_1`."""
    out: dict[str, float] = {}
    seen: dict[str, int] = {}
    for wrapped in optimizers:
        opt = getattr(wrapped, "optimizer", wrapped)
        meter = _METERS.get(opt)
        if meter is None:
            continue
        name, norm = meter
        k = seen[name] = seen.get(name, -1) + 1
        key = name if k == 0 else f"{name}_{k}"
        out[f"lr_{key}"] = float(opt.param_groups[0]["lr"])
        if norm is not None:  # a sharded run's norm is gathered (every process logs)
            out[f"grad_norm_{key}"] = float(full(norm))
    return out


def peak_memory_mib(device: torch.device) -> float:
    """The process's peak memory so far, MiB: torch's allocated peak on a GPU, else the resident set's high-water
    mark (`ru_maxrss`: KiB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10
