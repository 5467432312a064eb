"""FSDP over CPU processes: the trained roles sharded with torch's FSDP2 where accelerate will not shard them.

accelerate shards (`distributed_type: FSDP`, `recipes/accelerate/fsdp.yaml`) GPU processes only; launched over CPU
processes it trains them data-parallel. Under the same switch (the launcher's FSDP, `ACCELERATE_USE_FSDP`) a
recipe then shards its trained roles itself, before their optimisers are made (`shard`):

- one FSDP unit per block of each network (the classes its `_no_split_modules` names, else its down, mid, up and
  transformer blocks: accelerate's transformer-based wrap), then the network, then nothing else: every pass of a
  role (the generator, its denoiser, the fake score's bottleneck features) goes through its network;
- the sharded roles and their optimisers stay out of `accelerator.prepare` (which would wrap them in DDP); a
  `ShardedState` keeps them in every checkpoint, gathered whole on rank 0 (tensors that do not depend on how the
  weights were sharded; each process shards them again on resume); the EMA of sharded weights is a `training.ema.ShardedEMA` (its shadows gathered the same way);
- every pass of a sharded network gathers its weights from all processes, so every process samples the grids
  (`is_sharded`) and `gathered` builds the whole student, on every process, for the end of the run.

LoRA roles are refused: an adapter is a few MiB, and its frozen base would be sharded with it.
"""

from __future__ import annotations

import copy
import os
import weakref
from collections.abc import Iterable

import torch
from torch import nn

ENV = "ACCELERATE_USE_FSDP"  # set by `accelerate launch --use_fsdp` and by a config with distributed_type: FSDP
_BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks")
_TWINS: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()  # role -> meta twin


def wanted(accelerator) -> bool:
    """The launcher asked for FSDP on processes accelerate runs data-parallel (CPU processes)."""
    from accelerate.utils import DistributedType

    return (os.environ.get(ENV, "").lower() == "true" and accelerator.num_processes > 1
            and accelerator.distributed_type != DistributedType.FSDP)


def is_sharded(module: nn.Module | None) -> bool:
    """It holds an FSDP unit (its weights are not a reliable sign: between a unit's forward and its reshard they
    are its gathered, plain tensors)."""
    from torch.distributed.fsdp import FSDPModule

    return module is not None and any(isinstance(m, FSDPModule) for m in module.modules())


def full(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective: every process calls it); any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _networks(role: nn.Module) -> list[nn.Module]:
    """The network(s) a role runs: a `Generator`'s or `Denoiser`'s `.net`, else the module itself (a GAN head)."""
    net = getattr(role, "net", None)
    return [net] if isinstance(net, nn.Module) else [role]


def _units(net: nn.Module) -> list[nn.Module]:
    """The blocks that become FSDP units: the outermost modules of the classes the network's `_no_split_modules`
    names, else the entries of its block lists and its mid block."""
    names = set(getattr(net, "_no_split_modules", None) or ())
    found: list[nn.Module] = []
    if names:
        inside: set[int] = set()
        for m in net.modules():
            if id(m) in inside or m is net:
                continue
            if type(m).__name__ in names:
                found.append(m)
                inside.update(id(c) for c in m.modules())
    if not found:
        for attr in _BLOCK_LISTS:
            found += list(getattr(net, attr, None) or [])
        if isinstance(getattr(net, "mid_block", None), nn.Module):
            found.append(net.mid_block)
    return [m for m in found if any(True for _ in m.parameters())]


def _meta_twin(role: nn.Module) -> nn.Module:
    """The role's structure with its parameters on the meta device (no memory); buffers copied as they are."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in role.parameters()}
    return copy.deepcopy(role, memo)


def shard(accelerator, *roles: nn.Module | None) -> None:
    """Shard each role's network(s) in place (`None` entries skipped), when `wanted`: call before the roles'
    optimisers and EMA are made, which then hold the sharded weights. Mixed precision follows accelerate's
    (weights gathered in the compute dtype, gradients reduced in float32)."""
    if wanted(accelerator):
        from .distributed import compute_dtype

        shard_roles(*roles, dtype=compute_dtype(accelerator.mixed_precision))


def shard_roles(*roles: nn.Module | None, dtype: torch.dtype = torch.float32) -> None:
    """`shard` on the default process group, whatever the launcher asked: the weights gathered in `dtype` for
    the passes, gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from .adapters import adapter_names

    policy = MixedPrecisionPolicy(param_dtype=None if dtype == torch.float32 else dtype, reduce_dtype=torch.float32)
    for role in roles:
        if role is None or is_sharded(role):
            continue
        for net in _networks(role):
            if adapter_names(net):
                raise ValueError("FSDP shards full networks; this run trains LoRA adapters (a few MiB, on a frozen "
                                 "base every process holds): launch it data-parallel, without --use_fsdp / "
                                 "recipes/accelerate/fsdp.yaml, or set the model's *_lora_rank to null")
        _TWINS[role] = _meta_twin(role)
        for net in _networks(role):
            for unit in _units(net):
                fully_shard(unit, mp_policy=policy)
            fully_shard(net, mp_policy=policy)
        loose = [n for n, p in role.named_parameters() if p.requires_grad and not is_sharded_tensor(p)]
        if loose:
            raise ValueError(f"{type(role).__name__}: trainable weights outside its network were not sharded "
                             f"({loose[0]}, ...)")


def is_sharded_tensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gathered(role: nn.Module) -> nn.Module:
    """A sharded role as one whole, plain module (every process calls it: its weights are gathered from all);
    any other module as it is."""
    if not is_sharded(role):
        return role
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(role, options=StateDictOptions(full_state_dict=True))
    plain = copy.deepcopy(_TWINS[role])
    device = next(t.device for t in state.values())
    plain.load_state_dict({k: v.to(device) for k, v in state.items()}, assign=True)
    return plain


def _state_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # whole tensors on rank 0 (which writes the checkpoint), in CPU memory
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


class ShardedState:
    """The sharded roles' weights and their optimisers' states in a checkpoint (`accelerator.register_for_checkpointing`),
    gathered whole on rank 0 as accelerate's own files are; every process reads them back and keeps its shards."""

    def __init__(self, roles: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]):
        self.roles = nn.ModuleList(roles)  # one tree, so each weight has one name for its optimiser's state
        self.optimizers = list(optimizers)

    def state_dict(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        return {"model": get_model_state_dict(self.roles, options=_state_options()),
                "optimizers": [get_optimizer_state_dict(self.roles, o, options=_state_options())
                               for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        whole = StateDictOptions(full_state_dict=True)  # every process read the same file: each keeps its shards
        set_model_state_dict(self.roles, state["model"], options=whole)
        for opt, saved in zip(self.optimizers, state["optimizers"]):
            set_optimizer_state_dict(self.roles, opt, saved, options=whole)


def all_optimizers(accelerator) -> list:
    """Every optimiser of the run: accelerate's prepared ones, then the sharded roles' (which accelerate does not
    hold)."""
    return [*accelerator._optimizers, *(o for obj in getattr(accelerator, "_custom_objects", ())
                                        if isinstance(obj, ShardedState) for o in obj.optimizers)]


def prepare(accelerator, *objects):
    """`accelerator.prepare` for a recipe's roles, optimisers and schedulers, in its order (`None` entries pass
    through): sharded roles (`shard`) and the optimisers of sharded weights pass through as they are, checkpointed
    by one `ShardedState` (an optimiser's weights must all be among the roles of the same call); the rest
    (schedulers, unsharded modules) are prepared. Where FSDP is `wanted`, every module must have been sharded."""
    modules = [o for o in objects if isinstance(o, nn.Module)]
    sharded = [m for m in modules if is_sharded(m)]
    if wanted(accelerator) and len(sharded) < len(modules):
        raise ValueError("FSDP over CPU processes (the launcher's distributed_type: FSDP) is not supported by this "
                         "recipe's roles: launch it data-parallel (recipes/accelerate/ddp.yaml)")
    held = [o for o in objects if isinstance(o, torch.optim.Optimizer)
            and any(is_sharded_tensor(p) for g in o.param_groups for p in g["params"])]
    if sharded or held:
        accelerator.register_for_checkpointing(ShardedState(sharded, held))
    keep = {id(o) for o in [*sharded, *held]}
    rest = [o for o in objects if o is not None and id(o) not in keep]
    prepared = iter(_as_tuple(accelerator.prepare(*rest)) if rest else ())
    out = tuple(o if o is None or id(o) in keep else next(prepared) for o in objects)
    return out if len(out) > 1 else out[0]


def _as_tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)
