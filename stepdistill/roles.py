"""The roles a recipe builds from its teacher (`stepdistill.teachers.Teacher`): the trio every
distribution-matching method shares.

- `make_real_score`: the frozen teacher as a `Denoiser`.
- `make_fake_score`: the online score of the generator's distribution, a full trainable copy of the
  teacher, or a peft LoRA on the teacher's own network (SwiftBrush: adapters on for the fake score,
  off for the real score, so two networks' weights are in memory, not three).
- `make_generator`: a trainable copy of the teacher evaluated at a fixed input time (or K copies).

Consistency targets (`make_target`, `ema_update`) and the other parameter handling live in
`stepdistill.networks`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .adapters import adapter_names, add_lora, delete_lora
from .denoiser import Denoiser
from .networks import set_gradient_checkpointing
from .teachers import Teacher

__all__ = ["make_real_score", "make_fake_score", "make_generator", "Generator"]


def make_real_score(teacher: Teacher, *, gradient_checkpointing: bool = False) -> Denoiser:
    """The frozen teacher; with a LoRA fake score on the same network, adapters are off here.
    `gradient_checkpointing`: for losses that backpropagate through its activations (SiD, SIM)."""
    if gradient_checkpointing:
        set_gradient_checkpointing(teacher.net, True)
    return teacher.denoiser(adapter=None)


def make_fake_score(teacher: Teacher, *, lora_rank: int | None = None, lora_alpha: float | None = None,
                    target_modules: list[str] | None = None, gradient_checkpointing: bool = False,
                    adapter: str = "fake_score") -> Denoiser:
    """A trainable copy of the teacher, or (lora_rank set) a LoRA adapter named `adapter` on it (several fake
    scores on one teacher, as multi-student distillation's per-student ones, each take a name of their own)."""
    if lora_rank is None:
        net = teacher.network_copy().train().requires_grad_(True)
        set_gradient_checkpointing(net, gradient_checkpointing)
        return teacher.denoiser(net=net)
    add_lora(teacher.net, adapter, rank=lora_rank, alpha=lora_alpha, target_modules=target_modules)
    set_gradient_checkpointing(teacher.net, gradient_checkpointing)
    # peft marks only the adapter's weights trainable; the teacher's own weights stay frozen.
    return teacher.denoiser(adapter=adapter)


class Generator(nn.Module):
    """G(z) = D(sigma(t_init) z, t_init): a denoiser fed pure noise at a fixed time (DMD2: t = 999
    on SD, sigma = 80 on EDM; SiD: sigma_init = 2.5). `z` is unit Gaussian noise."""

    def __init__(self, denoiser: Denoiser, t_init: float):
        super().__init__()
        self.denoiser, self.t_init = denoiser, float(t_init)
        self.input_scale = float(denoiser.schedule.sigma(torch.tensor(self.t_init, dtype=torch.float64)))

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def _no_split_modules(self) -> list[str] | None:
        return self.denoiser._no_split_modules  # FSDP's per-block units (`Denoiser._no_split_modules`)

    def forward(self, z: torch.Tensor, t: torch.Tensor | float | None = None, **cond) -> torch.Tensor:
        """One step from unit noise `z` at t_init; with `t`, `z` is instead an input x_t at time t
        (a multistep generator's later steps, e.g. from backward simulation)."""
        if t is None:
            return self.denoiser(z * self.input_scale, self.t_init, **cond)
        return self.denoiser(z, t, **cond)


def make_generator(teacher: Teacher, t_init: float | None = None, *, copies: int = 1,
                   lora_rank: int | None = None, lora_alpha: float | None = None,
                   target_modules: list[str] | None = None,
                   gradient_checkpointing: bool = False, network: nn.Module | None = None) -> Generator | nn.ModuleList:
    """Trainable copies of the teacher bound to `t_init` (default: the schedule's t_max).

    `copies > 1` gives the K students of multi-student distillation as an `nn.ModuleList`.
    With `lora_rank`, each copy trains a LoRA adapter named "generator" instead of all weights.
    `network`: a student network of its own (a smaller one, `smaller_network`) in place of the teacher's copy.
    """
    t_init = teacher.schedule.t_max if t_init is None else t_init
    students = []
    for _ in range(copies):
        if network is not None:
            net = copy.deepcopy(network)
        elif lora_rank is None:  # float32 master weights, read again from the source under bf16 / fp16
            net = teacher.network_copy()
        else:  # a frozen base, held as the teacher is (in the compute dtype); the adapter trains in float32
            net = copy.deepcopy(teacher.net)
        for name in adapter_names(net):  # drop a LoRA fake score sharing the given network
            delete_lora(net, name)
        if lora_rank is None:
            net.train().requires_grad_(True)
            adapter = None
        else:
            add_lora(net, "generator", rank=lora_rank, alpha=lora_alpha, target_modules=target_modules)
            net.train()
            adapter = "generator"
        set_gradient_checkpointing(net, gradient_checkpointing)
        students.append(Generator(teacher.denoiser(net=net, adapter=adapter), t_init))
    return students[0] if copies == 1 else nn.ModuleList(students)
