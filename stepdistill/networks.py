"""What the roles do to a network's parameters: freezing, switching trainability, target copies and their EMA,
replayed random streams, dropout, gradient checkpointing, and a smaller network of the same architecture.
Recipes never touch parameters directly."""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from torch import nn

from .adapters import checkpoint_with_adapters

__all__ = ["freeze", "trainable", "make_target", "ema_update", "rng_state", "replayed_rng", "set_dropout",
           "set_gradient_checkpointing", "smaller_network"]


def freeze(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


@contextlib.contextmanager
def trainable(module: nn.Module | None, flag: bool) -> Iterator[None]:
    """Temporarily set requires_grad on the parameters that are trainable in `module`'s role (None: nothing).

    Used to keep one network's gradients out of another's update (DMD2 trains the fake score and the
    generator in alternation): the parameters that were trainable on entry are toggled and restored.
    """
    params = [] if module is None else [p for p in module.parameters() if getattr(p, "_stepdistill_trainable", p.requires_grad)]
    for p in params:
        p._stepdistill_trainable = True
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def make_target(module: nn.Module) -> nn.Module:
    """A frozen copy of `module`: the target network of consistency training and distillation, updated
    only by `ema_update` (Song et al. 2023, theta^- <- sg(mu theta^- + (1 - mu) theta))."""
    return freeze(copy.deepcopy(module))


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """target <- mu * target + (1 - mu) * online, parameter by parameter; buffers are copied. mu = 0 makes
    the target the online network (iCT / ECT: no EMA target), mu = 1 leaves it unchanged."""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"EMA rate mu={mu} must lie in [0, 1]")
    t_params, o_params = dict(target.named_parameters()), dict(online.named_parameters())
    if t_params.keys() != o_params.keys():
        raise ValueError("target and online networks have different parameters")
    for name, p in t_params.items():
        p.lerp_(o_params[name].detach().to(p.dtype), 1.0 - mu)
    for (name, b), (_, ob) in zip(target.named_buffers(), online.named_buffers()):
        b.copy_(ob)


def rng_state(device: torch.device | str) -> tuple:
    """The random streams a forward pass draws from (dropout): the CPU's and, on CUDA, the device's."""
    device = torch.device(device)
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextlib.contextmanager
def replayed_rng(state: tuple, device: torch.device | str) -> Iterator[None]:
    """Run the block from the random streams of `state` (`rng_state`), then continue from where they were:
    consistency training's target pass then draws the online pass's dropout masks (iCT, ECT: "the same
    dropout RNG"), so the two differ only by their inputs."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


def set_dropout(module: nn.Module, p: float | None) -> None:
    """Set every dropout layer's probability (None: leave the network's own)."""
    if p is None:
        return
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout={p} must lie in [0, 1)")
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def set_gradient_checkpointing(net: nn.Module, enabled: bool = True) -> None:
    """Recompute activations in the backward pass (diffusers models), adapter-aware (`checkpoint_with_adapters`)."""
    if enabled and hasattr(net, "enable_gradient_checkpointing"):
        net.enable_gradient_checkpointing(gradient_checkpointing_func=checkpoint_with_adapters)
    elif not enabled and hasattr(net, "disable_gradient_checkpointing"):
        net.disable_gradient_checkpointing()


def smaller_network(net: nn.Module, width: float, *, seed: int = 0) -> nn.Module:
    """A freshly initialised network of `net`'s class and config with every block's channels times `width`
    (rounded to multiples of 8; group norms regrouped to divide them): a smaller student (multi-student
    distillation), about width^2 of the parameters. Seeded, so every process builds the same weights."""
    import math

    if not 0 < width <= 1:
        raise ValueError(f"a smaller network's width must lie in (0, 1], got {width}")
    config = {k: v for k, v in dict(net.config).items() if not k.startswith("_")}
    channels = [max(8, int(round(c * width / 8)) * 8) for c in config["block_out_channels"]]
    groups = math.gcd(int(config.get("norm_num_groups") or 32), *channels)
    config.update(block_out_channels=channels, norm_num_groups=groups)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return type(net).from_config(config).to(next(net.parameters()).device)
