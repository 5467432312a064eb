"""LoRA adapters (peft) on any torch network, switched per role without touching requires_grad.

diffusers' `PeftAdapterMixin` exists only on some models (not `UNet2DModel`), and peft's own
`enable_adapters` / `set_adapter` also flip `requires_grad` of the adapter weights as a side effect,
which would undo the trio's explicit trainability. So roles select adapters by setting the two
flags peft's LoRA layers read in `forward` (`_disable_adapters`, `_active_adapter`) and nothing else.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _tuner_layers(net: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in net.modules() if isinstance(m, BaseTunerLayer)]


def adapter_names(net: nn.Module) -> set[str]:
    names: set[str] = set()
    for layer in _tuner_layers(net):
        names.update(getattr(layer, "lora_A", {}).keys())
    return names


def add_lora(net: nn.Module, name: str, *, rank: int, alpha: float | None = None,
             target_modules: list[str] | None = None) -> None:
    """Inject a LoRA adapter `name` (Gaussian A, zero B: the network is unchanged at first). peft
    freezes every non-adapter weight and leaves the new adapter trainable."""
    from peft import LoraConfig, inject_adapter_in_model

    if name in adapter_names(net):
        raise ValueError(f"the network already has an adapter named {name!r}")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, init_lora_weights="gaussian",
                        target_modules=target_modules or DEFAULT_TARGETS)
    inject_adapter_in_model(config, net, adapter_name=name)
    _float32(net, name)
    activate(net, None)


def _float32(net: nn.Module, name: str) -> None:
    """Adapter `name`'s weights in float32 (master weights), also on a bf16 / fp16 frozen base, where peft makes
    them in the base layer's dtype."""
    for key, param in net.named_parameters():
        if f".{name}." in key:
            param.data = param.data.float()


def activate(net: nn.Module, name: str | None) -> None:
    """Run `net` with adapter `name`, or with all adapters off (the base weights) for None."""
    for layer in _tuner_layers(net):
        layer._disable_adapters = name is None
        if name is not None:
            layer._active_adapter = [name]


def delete_lora(net: nn.Module, name: str) -> None:
    for layer in _tuner_layers(net):
        if name in getattr(layer, "lora_A", {}):
            layer.delete_adapter(name)
    configs = getattr(net, "peft_config", None)
    if isinstance(configs, dict):
        configs.pop(name, None)
        if not configs:
            del net.peft_config


def adapter_state(module: nn.Module) -> list[tuple[nn.Module, bool, list[str]]]:
    """Which adapters each LoRA layer of `module` runs with right now."""
    return [(layer, layer._disable_adapters, list(layer._active_adapter)) for layer in _tuner_layers(module)]


def set_adapter_state(state: list[tuple[nn.Module, bool, list[str]]]) -> None:
    for layer, disabled, active in state:
        layer._disable_adapters, layer._active_adapter = disabled, active


def checkpoint_with_adapters(module: nn.Module, *args):
    """diffusers' gradient-checkpointing function, made safe for roles that share one network through adapters
    (a LoRA fake score on the teacher's weights): the backward pass recomputes `module` with the adapters it ran
    with in the forward pass, not with whichever role ran last."""
    import torch.utils.checkpoint

    forward_state = adapter_state(module)

    def run(*inputs):
        now = adapter_state(module)
        set_adapter_state(forward_state)
        try:
            return module(*inputs)
        finally:
            set_adapter_state(now)

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False)


def _counterparts(net: nn.Module, source: str, name: str) -> list[tuple[nn.Parameter, nn.Parameter]]:
    """(adapter `name`'s parameter, adapter `source`'s) pairs, matched by their names in `net`."""
    params = dict(net.named_parameters())
    pairs = [(params[key.replace(f".{source}.", f".{name}.")], p) for key, p in params.items() if f".{source}." in key]
    if not pairs or len(pairs) != sum(f".{name}." in key for key in params):
        raise ValueError(f"adapters {source!r} and {name!r} do not have the same layers")
    return pairs


def copy_lora(net: nn.Module, source: str, name: str) -> None:
    """A frozen copy of adapter `source`, named `name`, on the same layers (a LoRA student's EMA target)."""
    import copy

    from peft import inject_adapter_in_model

    if name in adapter_names(net):
        raise ValueError(f"the network already has an adapter named {name!r}")
    inject_adapter_in_model(copy.deepcopy(net.peft_config[source]), net, adapter_name=name)
    _float32(net, name)
    activate(net, None)
    with torch.no_grad():
        for target, online in _counterparts(net, source, name):
            target.copy_(online).requires_grad_(False)


@torch.no_grad()
def ema_lora(net: nn.Module, target: str, online: str, mu: float) -> None:
    """Adapter `target` <- mu * target + (1 - mu) * `online`, weight by weight (`networks.ema_update` for LoRAs)."""
    for t, o in _counterparts(net, online, target):
        t.lerp_(o.detach().to(t.dtype), 1.0 - mu)
