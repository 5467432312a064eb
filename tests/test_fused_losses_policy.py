"""`train.fused_losses` (`stepdistill.ops.set_fused_losses`): `auto` checks each fused loss once against its
reference and falls back, with one warning, on a mismatch or an exception; `on` never checks; `off` never runs a
kernel; and a run records what ran (`ops.backends()`, the results' `fused_losses`, the card's "Losses:" line).

The kernels' rules only pick Triton on CUDA, so these tests force it with `use_triton(True)`; the real kernels then
run through Triton's CPU interpreter (TRITON_INTERPRET=1, set here before triton is first imported, as
tests/kernels/conftest.py does), and stand-ins monkeypatched into `stepdistill_kernels` play a wrong or failing
kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402

import stepdistill_kernels  # noqa: E402
from stepdistill import losses, ops  # noqa: E402
from stepdistill.export.card import fused_losses_line  # noqa: E402
from stepdistill.training.final import _card_text  # noqa: E402
from stepdistill.training.horizon import Horizon  # noqa: E402
from stepdistill_kernels.launch import stdlib_interpreted  # noqa: E402 - imports triton, after the lines above

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = DEVICE == "cuda" or stdlib_interpreted()  # the real kernels can run in this process
SHAPE = (3, 5, 7, 9)  # 3 samples: the check's probe takes the first 2
KERNELS = {"dmd": losses.dmd_loss, "vsd": losses.vsd_loss, "sid": losses.sid_loss,
           "pseudo_huber": losses.pseudo_huber_loss}


@pytest.fixture(autouse=True)
def fresh_policy(monkeypatch):
    """Each test starts from the default policy with nothing checked or recorded, and leaves it so."""
    monkeypatch.delenv("STEPDISTILL_OPS", raising=False)
    ops.set_fused_losses("auto")
    yield
    ops.set_fused_losses("auto")


def make_args(kernel: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple:
    torch.manual_seed(seed)
    return importlib.import_module(f"stepdistill_kernels.{kernel}.bench").make_args(SHAPE, dtype, DEVICE)


def loss_and_grads(fn, args: tuple) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    loss = fn(*args)
    return loss.detach(), list(torch.autograd.grad(loss, leaves))


class _ScaleGrad(torch.autograd.Function):
    """The identity on the loss; its gradient scaled: a kernel whose loss is right and whose backward is not."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return loss.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def stand_in(kernel: str, fault: str, calls: list):
    """A fused function for `kernel` with `fault`: "value" (loss 1e-3 too large), "gradient" (gradients 1e-3
    too large, loss exact), "raises" (a compile error), "none" (the reference itself). Appends to `calls`."""
    reference = KERNELS[kernel].reference

    def fused(*args, **kwargs):
        calls.append(fault)
        if fault == "raises":
            raise RuntimeError("simulated compile error: PassManager::run failed\n(more lines)")
        loss = reference(*args, **kwargs)
        return {"value": loss * (1 + 1e-3), "gradient": _ScaleGrad.apply(loss, 1 + 1e-3), "none": loss}[fault]

    return fused


def fallback_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ops.FusedLossFallbackWarning)]


@pytest.mark.parametrize("fault", ["value", "gradient", "raises"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_auto_falls_back_to_the_reference_with_one_warning(kernel, fault, monkeypatch):
    """A kernel that disagrees (its loss, or only a gradient) or fails to compile: the check catches it on the
    first call, every call returns the reference's loss and gradients exactly, the kernel never runs again, and
    one warning names the loss, the reason and how to force the choice."""
    loss_fn, name = KERNELS[kernel], KERNELS[kernel].__name__
    calls: list = []
    monkeypatch.setattr(stepdistill_kernels, f"{name}_fused", stand_in(kernel, fault, calls), raising=False)
    with ops.use_triton(True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed in range(3):
            loss, grads = loss_and_grads(loss_fn, make_args(kernel, seed=seed))
            ref_loss, ref_grads = loss_and_grads(loss_fn.reference, make_args(kernel, seed=seed))
            assert torch.equal(loss, ref_loss)
            assert all(torch.equal(g, r) for g, r in zip(grads, ref_grads, strict=True))
    (message,) = fallback_warnings(caught)
    assert name in message and "train.fused_losses=on" in message and "train.fused_losses=off" in message
    reason = {"value": "loss ", "gradient": "gradient of ", "raises": "RuntimeError: simulated compile error"}[fault]
    assert reason in message
    assert len(calls) == 1  # the check's first probe only
    (recorded,) = ops.backends().values()
    assert recorded.startswith(f"reference (fallback: {reason}")
    assert f"({recorded.removeprefix('reference (fallback: ')}" in message  # the same reason in both
    assert list(ops.backends()) == [name]


def test_the_check_is_its_own_autograd_even_under_no_grad(monkeypatch):
    """A first call under torch.no_grad (an evaluation, say) still compares the gradients, on copies: the
    caller's tensors get no .grad and no graph."""
    calls: list = []
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "gradient", calls), raising=False)
    args = make_args("dmd")
    with ops.use_triton(True), torch.no_grad(), pytest.warns(ops.FusedLossFallbackWarning, match="gradient of x"):
        loss = losses.dmd_loss(*args)
    assert loss.grad_fn is None and args[0].grad is None
    assert torch.equal(loss, losses.dmd_loss.reference(*args).detach())


def test_auto_checks_once_then_reads_only_the_verdict(monkeypatch):
    """After the first call neither the reference nor any comparison runs again (no host sync): the reference
    runs once per probe, the kernel once per probe and once per call."""
    reference_calls, kernel_calls = [], []

    def reference(*args, **kwargs):
        reference_calls.append(1)
        return losses.dmd_loss.reference(*args, **kwargs)

    reference.__name__ = "dmd_loss"
    loss_fn = ops.dispatched(reference, "dmd_loss_fused")
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "none", kernel_calls), raising=False)
    with ops.use_triton(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(*make_args("dmd"))
        probes = len(reference_calls)
        assert probes == 2 and len(kernel_calls) == probes + 1  # the call's first samples, seeded normal inputs
        monkeypatch.setattr(ops, "_check", lambda *a, **k: pytest.fail("checked twice"))
        for seed in range(1, 4):
            loss_fn(*make_args("dmd", seed=seed))
    assert len(reference_calls) == probes and len(kernel_calls) == probes + 4
    assert ops.backends() == {"dmd_loss": "fused"}


def test_a_zero_loss_call_is_still_checked_on_seeded_inputs(monkeypatch):
    """At step 1 a fake score often equals the teacher: DMD's loss and gradient are then exactly zero for any
    kernel, and only the seeded normal inputs expose one whose gradient is off."""
    calls: list = []
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "gradient", calls), raising=False)
    x, real, _ = make_args("dmd")
    with ops.use_triton(True), pytest.warns(ops.FusedLossFallbackWarning, match="on seeded normal inputs"):
        losses.dmd_loss(x, real, real.clone())
    assert len(calls) == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_auto_keeps_a_real_kernel_that_passes_its_check(kernel, dtype):
    """The interpreted (or, on a GPU, compiled) kernels pass the check with its tolerances, in float32 and for a
    bf16 call (its own-dtype probe), and then run the call itself: no warning, recorded as fused."""
    if not INTERPRETED:
        pytest.skip("triton was imported before TRITON_INTERPRET=1; test_real_kernels_in_a_fresh_process runs this")
    loss_fn = KERNELS[kernel]
    with ops.use_triton(True), warnings.catch_warnings():
        warnings.simplefilter("error", ops.FusedLossFallbackWarning)
        for seed in range(2):
            args = make_args(kernel, dtype, seed)
            loss = loss_fn(*args)
            assert type(loss.grad_fn).__name__.startswith("Fused")
            loss.backward()
    assert ops.fused_losses_record() == {"mode": "auto", "backends": {loss_fn.__name__: "fused"}}


@pytest.mark.skipif(INTERPRETED, reason="the real kernels run in this process")
def test_real_kernels_in_a_fresh_process():
    """Where triton was imported before this file could enable its interpreter: the real-kernel test there."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                           "-k", "real_kernel_that_passes"], cwd=Path(__file__).parents[1], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "skipped" not in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_off_never_runs_a_kernel_even_where_one_is_picked(monkeypatch):
    calls: list = []
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "raises", calls), raising=False)
    monkeypatch.setenv("STEPDISTILL_OPS", "triton")
    ops.set_fused_losses("off")
    args = make_args("dmd")
    with ops.use_triton(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not ops.triton_enabled(args[0])
        loss = losses.dmd_loss(*args)
    assert not calls and torch.equal(loss, losses.dmd_loss.reference(*args))
    assert ops.fused_losses_record() == {"mode": "off", "backends": {"dmd_loss": "reference"}}


def test_on_runs_the_kernel_unchecked(monkeypatch):
    """`on` trusts the kernel: no reference call, no warning, even for a wrong one (its result is returned)."""
    reference_calls, kernel_calls = [], []

    def reference(*args, **kwargs):
        reference_calls.append(1)
        return losses.dmd_loss.reference(*args, **kwargs)

    reference.__name__ = "dmd_loss"
    loss_fn = ops.dispatched(reference, "dmd_loss_fused")
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "value", kernel_calls), raising=False)
    ops.set_fused_losses("on")
    args = make_args("dmd")
    with ops.use_triton(True), warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = loss_fn(*args)
        loss_fn(*args)
    assert not reference_calls and len(kernel_calls) == 2
    assert torch.allclose(loss, losses.dmd_loss.reference(*args) * (1 + 1e-3))
    assert ops.fused_losses_record() == {"mode": "on", "backends": {"dmd_loss": "fused"}}


def test_the_rules_still_decide_where_the_kernel_is_picked(monkeypatch):
    """`auto` and `on` change nothing where the kernel is not picked (CPU tensors by default, use_triton(False),
    STEPDISTILL_OPS=reference): the reference runs, unchecked, and is recorded as such."""
    calls: list = []
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "raises", calls), raising=False)
    for mode in ("auto", "on"):
        ops.set_fused_losses(mode)
        with ops.use_triton(False):
            losses.dmd_loss(*make_args("dmd"))
        monkeypatch.setenv("STEPDISTILL_OPS", "reference")
        losses.dmd_loss(*make_args("dmd"))
        monkeypatch.delenv("STEPDISTILL_OPS")
        assert not calls and ops.backends() == {"dmd_loss": "reference"}
    with pytest.raises(ValueError, match="train.fused_losses='fast'"):
        ops.set_fused_losses("fast")


def test_the_default_policy_is_auto():
    code = "from stepdistill import ops; print(ops.fused_losses_record())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{'mode': 'auto', 'backends': {}}"


def test_the_record_for_the_results_and_the_card(monkeypatch):
    """The results' `fused_losses` entry (JSON-ready) and the card's one line, from the same record; no line
    when no fused-kernel loss ran."""
    import json

    calls: list = []
    monkeypatch.setattr(stepdistill_kernels, "sid_loss_fused", stand_in("sid", "raises", calls), raising=False)
    with ops.use_triton(True), pytest.warns(ops.FusedLossFallbackWarning):
        losses.sid_loss(*make_args("sid"))
    losses.dmd_loss(*make_args("dmd"))
    record = ops.fused_losses_record()
    assert json.loads(json.dumps(record)) == record == {"mode": "auto", "backends": {
        "sid_loss": "reference (fallback: RuntimeError: simulated compile error: PassManager::run failed)",
        "dmd_loss": "reference"}}
    line = ("Losses: `sid_loss` reference (fallback: RuntimeError: simulated compile error: PassManager::run "
            "failed); `dmd_loss` reference (train.fused_losses=auto).\n")
    assert fused_losses_line(record) == line
    text = _card_text(5, Horizon(5), 0.1, record)
    assert text.endswith("\n\n" + line) and text.startswith("## Training\n\n5 of 5 steps")
    assert fused_losses_line({"mode": "auto", "backends": {}}) == "" == fused_losses_line(None)
    assert "Losses" not in _card_text(5, Horizon(5), 0.1, {"mode": "auto", "backends": {}})


def test_a_loss_that_ran_both_ways_records_both(monkeypatch):
    monkeypatch.setattr(stepdistill_kernels, "dmd_loss_fused", stand_in("dmd", "none", []), raising=False)
    ops.set_fused_losses("on")
    with ops.use_triton(True):
        losses.dmd_loss(*make_args("dmd"))
    with ops.use_triton(False):
        losses.dmd_loss(*make_args("dmd"))
        losses.dmd_loss(*make_args("dmd"))
    assert ops.backends() == {"dmd_loss": "fused + reference"}
