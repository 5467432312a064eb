"""What a run holds before its first step, printed at setup so that a user sizes a GPU job before it starts:
each role's parameters (all and trainable; a text-to-image run's frozen text encoders and VAE too) and, per process, the memory of the parameters, the optimisers'
states and the EMA (activations come on top and depend on the batch).

Roles are read off a recipe's `Run`: every `nn.Module` field (the teacher from `run.setup`), every optimiser
and the EMA. A parameter held by several roles (a LoRA fake score on the teacher's network, a guided view of
the teacher) is counted once in the totals; a role whose parameters are all another's is not listed again.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

# Optimiser states per trainable parameter, each of the parameter's size: Adam's two moments, SGD's momentum.
STATES = {"Adam": 2, "AdamW": 2, "Adamax": 2, "NAdam": 2, "RAdam": 2, "AdamW8bit": 0.5, "Adam8bit": 0.5}


def _module(value: Any) -> nn.Module | None:
    value = getattr(value, "module", value)  # DDP / FSDP wrappers keep the model as .module
    return value if isinstance(value, nn.Module) else None


def _optimizer(value: Any) -> torch.optim.Optimizer | None:
    value = getattr(value, "optimizer", value)  # accelerate's AcceleratedOptimizer
    return value if isinstance(value, torch.optim.Optimizer) else None


def _fields(run: Any) -> tuple:
    return dataclasses.fields(run) if dataclasses.is_dataclass(run) else ()


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _frozen_inputs(setup: Any) -> dict[str, nn.Module]:
    """A text-to-image run's frozen networks around the trio: the text encoders (one row) and the VAE."""
    found = {}
    encoder = getattr(getattr(setup, "conditioner", None), "encoder", None)
    pipe = getattr(encoder, "pipe", None)
    texts = [m for m in (getattr(pipe, "components", None) or {}).values() if isinstance(m, nn.Module)]
    texts += [m for m in [getattr(encoder, "text_encoder", None)] if isinstance(m, nn.Module)]
    if texts:
        found["text_encoders"] = nn.ModuleList(texts)  # a view: the modules are not copied
    vae = getattr(getattr(setup, "space", None), "vae", None)
    if isinstance(vae, nn.Module):
        found["vae"] = vae
    return found


def _runs(run: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """The run and the per-student runs it holds (a list field of runs, multi-student distillation's), each with
    the suffix its roles are listed under."""
    found = [(prefix, run)]
    for f in _fields(run):
        value = getattr(run, f.name)
        if isinstance(value, (list, tuple)) and value and all(_fields(v) for v in value):
            for i, sub in enumerate(value):
                found += _runs(sub, f"{prefix}_{i}")
    return found


def roles(run: Any) -> dict[str, nn.Module]:
    """The run's networks by field name (`generator_0`, ... for per-student runs), the teacher's first, then a
    text-to-image run's text encoders and VAE."""
    found = {}
    setup = getattr(run, "setup", None)
    teacher = getattr(setup, "teacher", None)
    if teacher is not None and isinstance(getattr(teacher, "net", None), nn.Module):
        found["teacher"] = teacher.net
    for suffix, part in _runs(run):
        for f in _fields(part):
            module = _module(getattr(part, f.name))
            if module is not None:
                found[f.name + suffix] = module
    return found | _frozen_inputs(setup)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """The states an optimiser will hold once it has stepped (they are allocated lazily, at the first step)."""
    per = STATES.get(type(opt).__name__)
    if per is None:  # SGD: momentum buffers only when momentum is on; anything else: Adam's two, to be safe
        per = (1 if opt.defaults.get("momentum") else 0) if isinstance(opt, torch.optim.SGD) else 2
    params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
    return int(per * _bytes(params))


def footprint(run: Any) -> dict:
    """Rows per role (params, trainable, parameter MiB) and per-process totals in MiB."""
    networks = roles(run)
    rows, seen, listed = [], set(), []
    for name, module in networks.items():
        params = list(module.parameters())
        ids = {id(p) for p in params}
        if not ids or any(ids <= other for other in listed):
            continue  # a view of a role already listed (a guided teacher, a wrapper)
        listed.append(ids)
        rows.append(dict(role=name, params=sum(p.numel() for p in params),
                         trainable=sum(p.numel() for p in params if p.requires_grad),
                         mib=_bytes(p for p in params if id(p) not in seen) / 2**20))
        seen |= ids
    unique = {id(p): p for module in networks.values() for p in module.parameters()}
    parts = [part for _, part in _runs(run)]
    opts = {id(o): o for part in parts for f in _fields(part) if (o := _optimizer(getattr(part, f.name))) is not None}
    shadow = [p for part in parts for p in (getattr(getattr(part, "ema", None), "shadow_params", None) or [])]
    totals = dict(parameters=_bytes(unique.values()) / 2**20,
                  optimizer_states=sum(optimizer_state_bytes(o) for o in opts.values()) / 2**20,
                  ema=_bytes(shadow) / 2**20)
    totals["total"] = sum(totals.values())
    return dict(roles=rows, mib=totals)


def format_footprint(report: dict) -> str:
    lines = [f"{'role':<16}{'parameters':>14}{'trainable':>14}{'MiB':>10}"]
    for r in report["roles"]:
        lines.append(f"{r['role']:<16}{r['params']:>14,}{r['trainable']:>14,}{r['mib']:>10.1f}")
    m = report["mib"]
    lines.append(f"per process: parameters {m['parameters']:.1f} MiB + optimiser states {m['optimizer_states']:.1f} "
                 f"MiB + EMA {m['ema']:.1f} MiB = {m['total']:.1f} MiB before activations")
    return "\n".join(lines)
