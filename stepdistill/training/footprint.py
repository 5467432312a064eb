"""What a run holds in memory, per process, printed at setup so that a user sizes a GPU job before it starts
(`--plan` gives the same numbers before anything is loaded: `stepdistill.training.plan`):

- each role's parameters (all and trainable; a text-to-image run's frozen text encoders and VAE too), in the
  dtype each is held in;
- gradients: every trainable parameter's, in float32 (the master weights' dtype);
- optimiser states (allocated at the first step: Adam's two moments per trainable weight, ...);
- the EMA of the students;
- activations: what autograd saves for the backward pass at the run's resolution and per-process micro-batch.

Roles are read off a recipe's `Run`: every `nn.Module` field (the teacher from `run.setup`), every optimiser
and the EMA. A parameter held by several roles (a LoRA fake score on the teacher's network, a guided view of
the teacher) is counted once in the totals; a role whose parameters are all another's is not listed again.

Activations are measured, not guessed from a formula. Each pass a step runs with a graph (`Pass`, declared
per role by the recipe's `plan_roles(cfg)`) is run once on the meta device, which allocates nothing and computes
nothing, under `torch.autograd.graph.saved_tensors_hooks`: the bytes of every tensor saved for backward are
summed, each storage once (by its identity, `untyped_storage()`, which meta tensors have too), leaving out the
networks' own parameters and buffers (counted above) and counting the inputs that gradient checkpointing keeps
for its recomputation (its own saved tensors are discarded, as they are in training). Mixed precision runs
under autocast's casting policy (`AutocastPolicy`: matmuls, convolutions and attention in bf16/fp16, norms and
softmax in float32; autocast itself does nothing on meta): the low-precision copies autocast makes of the
float32 master weights and saves for backward are counted apart (`weight_copies`: data-parallel runs hold them;
FSDP's mixed precision gathers each unit's low-precision weights and frees them after use). Each pass is measured
at two batch sizes and extended linearly to the micro-batch, so a batch of 2,048 costs no more to plan than 1.

Which passes hold activations at once. A step runs its updates one after another (DMD2: the generator, then
the fake score with its discriminator), and each update's backward frees the graph that its passes built, so
the activations a step holds at its peak are those of its heaviest update: the sum over the passes that feed
that update's backward. A pass under `no_grad` holds nothing (DMD2's teacher and fake score in the generator
update, consistency targets, the teacher's solver steps); a trained role's forward holds what its weights'
gradients need; a frozen network the loss differentiates through holds what its input's gradient needs (SiD's
and SIM's teacher and fake score in the generator update, DMD2's fake-score encoder under the generator's GAN
loss, TAD-SR's teacher features); a generator sample whose graph lives through two updates (SiD's shared batch)
counts in both. So DMD2's generator update holds the generator's forward and the fake score's encoder (GAN),
its fake-score update the fake score's forward and its encoder on real and generated samples (the
discriminator); the peak is the larger.

Not counted: transient memory (a no-grad pass's working set, the recomputation of one checkpointed block during
backward, the optimiser step's temporaries, FSDP's gathered units), the loss's own small tensors, data batches,
cached prompt embeddings, ODE pairs, the CUDA context and the allocator's fragmentation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

# Optimiser states per trainable parameter, each of the parameter's size: Adam's two moments, SGD's momentum.
STATES = {"Adam": 2, "AdamW": 2, "Adamax": 2, "NAdam": 2, "RAdam": 2, "AdamW8bit": 0.5, "Adam8bit": 0.5}
GRAD_BYTES = 4  # gradients are float32, the master weights' dtype


def _module(value: Any) -> nn.Module | None:
    value = getattr(value, "module", value)  # DDP / FSDP wrappers keep the model as .module
    value = getattr(value, "_orig_mod", value)  # torch.compile's
    return value if isinstance(value, nn.Module) else None


def _optimizer(value: Any) -> torch.optim.Optimizer | None:
    value = getattr(value, "optimizer", value)  # accelerate's AcceleratedOptimizer
    return value if isinstance(value, torch.optim.Optimizer) else None


def _optimizers(value: Any) -> list[torch.optim.Optimizer]:
    """An optimiser field, or the optimisers in a list / tuple field (MSD's per-student Teacher Score Matching)."""
    if isinstance(value, (list, tuple)):
        return [o for v in value for o in _optimizers(v)]
    opt = _optimizer(value)
    return [] if opt is None else [opt]


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


def role_rows(networks: dict[str, nn.Module]) -> list[dict]:
    """One row per role (params, trainable, the MiB of the parameters first counted there), skipping a role whose
    parameters are all another listed role's (a guided view of the teacher, a LoRA role on the teacher's network)."""
    rows, seen, listed = [], set(), []
    for name, module in networks.items():
        params = list(module.parameters())
        ids = {id(p) for p in params}
        if not ids or any(ids <= other for other in listed):
            continue
        listed.append(ids)
        rows.append(dict(role=name, params=sum(p.numel() for p in params),
                         trainable=sum(p.numel() for p in params if p.requires_grad),
                         mib=_bytes(p for p in params if id(p) not in seen) / 2**20))
        seen |= ids
    return rows


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    """The states an optimiser will hold once it has stepped (they are allocated lazily, at the first step)."""
    per = STATES.get(type(opt).__name__)
    if per is None:  # SGD: momentum buffers only when momentum is on; anything else: Adam's two, to be safe
        per = (1 if opt.defaults.get("momentum") else 0) if isinstance(opt, torch.optim.SGD) else 2
    params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
    return int(per * _bytes(params))


# ----------------------------------------------------------------------------
# Activations: the bytes saved for backward, measured.

def _storage(t: torch.Tensor) -> tuple[int, int]:
    """(identity, bytes) of a tensor's storage: views of one storage are one entry."""
    try:
        s = t.untyped_storage()
        return s._cdata, s.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # a tensor without a plain storage
        return id(t), t.numel() * t.element_size()


_LOW = [F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
        F.conv_transpose3d, F.scaled_dot_product_attention, torch.matmul, torch.mm, torch.bmm, torch.baddbmm,
        torch.addmm, torch.addbmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm,
        torch.Tensor.baddbmm, torch.Tensor.addmm]
_FP32 = [F.group_norm, F.layer_norm, getattr(F, "rms_norm", None), F.softmax, F.log_softmax, torch.softmax,
         torch.log_softmax, torch.Tensor.softmax, torch.Tensor.log_softmax, F.mse_loss, torch.exp, torch.Tensor.exp,
         torch.rsqrt, torch.Tensor.rsqrt, torch.pow, torch.Tensor.pow, torch.norm, torch.Tensor.norm]


class _FusedAttention(torch.autograd.Function):
    """On meta, what a fused attention kernel (FlashAttention-2 or the memory-efficient one on a GPU, the flash kernel
    on a CPU) saves for backward: q, k, v, the output and the rows' log-sum-exp, never the L x S weights that meta's
    reference decomposition (the math path) would save."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse, *([] if mask is None else [mask]))
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - measured, never differentiated
        raise RuntimeError("a measurement's attention has no backward")


class AutocastPolicy(TorchFunctionMode):
    """What a training step runs, reproduced on the meta device, where `torch.autocast` does nothing and attention
    decomposes into its math path: scaled-dot-product attention on meta saves what a fused kernel saves
    (`_FusedAttention`), and with a `dtype` autocast's casting policy applies on any device: the floating-point
    arguments of matmuls, convolutions and attention are cast to `dtype`, those of norms, softmax, exp and pow to
    float32, every other op runs on what it is given (type promotion), as under autocast. Casts of the parameters in
    `master` (float32 master weights) are autocast's weight copies (`weight_copies`, their storages); casts of any
    other parameter stand for the parameter itself, which the run holds in `dtype` already (`held`)."""

    def __init__(self, dtype: torch.dtype | None = None, master: Iterable[nn.Parameter] = ()):
        super().__init__()
        self.dtype, self.master = dtype, {id(p) for p in master}
        self.weight_copies: set[int] = set()
        self.held: set[int] = set()
        self.casts: list[torch.Tensor] = []  # referenced while measuring: no other storage takes a cast's identity
        self.low, self.fp32 = set(_LOW), {f for f in _FP32 if f is not None}

    def _cast(self, value, dtype: torch.dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            cast = value.to(dtype)
            if isinstance(value, nn.Parameter):
                (self.weight_copies if id(value) in self.master else self.held).add(_storage(cast)[0])
                self.casts.append(cast)
            return cast
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast(v, dtype) for v in value)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        dtype = None
        if self.dtype is not None:
            dtype = self.dtype if func in self.low else torch.float32 if func in self.fp32 else None
        if dtype is not None:
            args = tuple(self._cast(a, dtype) for a in args)
            kwargs = {k: self._cast(v, dtype) for k, v in kwargs.items()}
        if func is F.scaled_dot_product_attention and args and args[0].device.type == "meta":
            q, k, v = args[:3]
            return _FusedAttention.apply(q, k, v, kwargs.get("attn_mask", args[3] if len(args) > 3 else None))
        return func(*args, **kwargs)


@dataclasses.dataclass
class SavedBytes:
    """What one pass saves for backward: `total` bytes, of which `weight_copies` are autocast's low-precision
    copies of float32 weights."""

    total: int = 0
    weight_copies: int = 0


def saved_for_backward(forward: Callable[[], Any], networks: Iterable[nn.Module],
                       autocast: torch.dtype | None = None, master: Iterable[nn.Parameter] = ()) -> SavedBytes:
    """Run `forward()` with grad (on meta or any device) and measure what autograd saves for its backward: each
    saved tensor's storage once, the parameters and buffers of `networks` left out, the inputs of the blocks that
    `networks` checkpoint (gradient checkpointing keeps them for the recomputation) counted. `autocast`: the
    compute dtype of mixed precision (`AutocastPolicy`; None: float32), under which the parameters in `master` are
    float32 master weights (their low-precision copies are counted, as `weight_copies` too) and every other
    parameter is held in the compute dtype (what is saved of it is the parameter itself)."""
    networks = list(networks)
    state = {_storage(t)[0] for net in networks for t in [*net.parameters(), *net.buffers()]}
    saved: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # referenced until the end, so that no storage's identity is reused meanwhile

    def record(t: torch.Tensor) -> None:
        key, size = _storage(t)
        keep.append(t)
        if key not in state:
            saved[key] = size

    def pack(t: torch.Tensor) -> torch.Tensor:
        record(t)
        return t

    outputs: dict[tuple, Any] = {}  # checkpointed blocks on meta: output structure by block and input signature

    def checkpointed(original, block, *args):
        tensors = [a for a in pytree.tree_leaves(args) if isinstance(a, torch.Tensor)]
        for t in tensors:  # kept by the checkpoint for the recomputation
            record(t)
        if not all(t.device.type == "meta" for t in tensors) or block._forward_hooks or block._forward_pre_hooks:
            return original(block, *args)  # a hooked block (a bottleneck read for features) runs as it is
        # On meta the block's own saved tensors are discarded anyway: blocks alike (a transformer's 57) run once,
        # then give outputs of the same structure, tied to the graph as the checkpoint's are.
        params = list(block.parameters())
        key = (type(block), tuple((tuple(p.shape), p.dtype) for p in params),
               tuple((tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor) else repr(a)
                     for a in pytree.tree_leaves(args)))
        if key not in outputs:
            with torch.no_grad():
                outputs[key] = block(*args)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in [*tensors, *params])
        return pytree.tree_map(lambda o: torch.empty_like(o).requires_grad_(grad and o.is_floating_point())
                               if isinstance(o, torch.Tensor) else o, outputs[key])

    patched = []
    for net in networks:  # checkpointed blocks: their inputs are held for the recomputation
        for m in net.modules():
            original = getattr(m, "_gradient_checkpointing_func", None)
            if getattr(m, "gradient_checkpointing", False) is True and callable(original):
                m._gradient_checkpointing_func = functools.partial(checkpointed, original)
                patched.append((m, original))
    policy = AutocastPolicy(autocast, master)
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), policy:
            forward()
    finally:
        for m, original in patched:
            m._gradient_checkpointing_func = original
    saved = {key: size for key, size in saved.items() if key not in policy.held}
    copies = sum(size for key, size in saved.items() if key in policy.weight_copies)
    return SavedBytes(total=sum(saved.values()), weight_copies=copies)


# ----------------------------------------------------------------------------
# The report.

def footprint(run: Any) -> dict:
    """Rows per role (params, trainable, parameter MiB) and per-process totals in MiB: parameters, gradients,
    optimiser states, EMA and activations (None where they could not be estimated, with the reason in
    `activations`)."""
    networks = roles(run)
    rows = role_rows(networks)
    unique = {id(p): p for module in networks.values() for p in module.parameters()}
    parts = [part for _, part in _runs(run)]
    opts = {id(o): o for part in parts for f in _fields(part) for o in _optimizers(getattr(part, f.name))}
    shadow = [p for part in parts for p in (getattr(getattr(part, "ema", None), "shadow_params", None) or [])]
    totals = dict(parameters=_bytes(unique.values()) / 2**20,
                  gradients=sum(p.numel() for p in unique.values() if p.requires_grad) * GRAD_BYTES / 2**20,
                  optimizer_states=sum(optimizer_state_bytes(o) for o in opts.values()) / 2**20,
                  ema=_bytes(shadow) / 2**20)
    activations = run_activations(run)
    totals["activations"] = activations.get("mib")
    totals["total"] = sum(v for v in totals.values() if v is not None)
    return dict(roles=rows, mib=totals, activations=activations)


def run_activations(run: Any) -> dict:
    """The activation estimate of `run` at its micro-batch (`plan.run_activations`); a run whose recipe declares no
    passes, or whose estimate fails, reports the reason instead of a number (training does not depend on it)."""
    from .plan import run_activations as measure

    try:
        return measure(run)
    except Exception as e:  # an estimate printed at setup must never stop the run it describes
        first = str(e).splitlines()[0] if str(e) else ""
        return {"mib": None, "reason": f"not estimated ({type(e).__name__}: {first})"}


def format_footprint(report: dict) -> str:
    lines = [f"{'role':<16}{'parameters':>14}{'trainable':>14}{'MiB':>10}"]
    for r in report["roles"]:
        lines.append(f"{r['role']:<16}{r['params']:>14,}{r['trainable']:>14,}{r['mib']:>10.1f}")
    m, act = report["mib"], report.get("activations") or {}
    if m.get("activations") is None:
        activations = f"activations {act.get('reason', 'not estimated')}"
    else:
        activations = (f"activations {m['activations']:.1f} MiB (micro-batch {act['micro_batch']:g}, peak in the "
                       f"{act['peak_update']} update)")
    lines.append(f"per process: parameters {m['parameters']:.1f} MiB + gradients {m['gradients']:.1f} MiB + optimiser "
                 f"states {m['optimizer_states']:.1f} MiB + EMA {m['ema']:.1f} MiB + {activations} = "
                 f"{m['total']:.1f} MiB")
    return "\n".join(lines)
