"""`stepdistill.ops` dispatch of `stepdistill.losses`: reference off CUDA by default, Triton when forced, the same
loss either way; one signature per loss."""

import importlib

import pytest
import torch

import inspect

from stepdistill import losses, ops
from stepdistill_kernels import KERNELS

OPS = {"dmd": losses.dmd_loss, "vsd": losses.vsd_loss, "sid": losses.sid_loss, "pseudo_huber": losses.pseudo_huber_loss}


def test_default_is_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("STEPDISTILL_OPS", raising=False)
    assert not ops.triton_enabled(torch.zeros(1))
    monkeypatch.setenv("STEPDISTILL_OPS", "triton")
    assert ops.triton_enabled(torch.zeros(1))
    with ops.use_triton(False):  # the function override wins over the environment
        assert not ops.triton_enabled(torch.zeros(1))
    assert ops.triton_enabled(torch.zeros(1))
    monkeypatch.setenv("STEPDISTILL_OPS", "fast")
    with pytest.raises(ValueError, match="STEPDISTILL_OPS"):
        ops.triton_enabled(torch.zeros(1))


@pytest.mark.parametrize("name", KERNELS)
def test_same_loss_and_gradient_with_triton_and_reference(device, name, monkeypatch):
    monkeypatch.delenv("STEPDISTILL_OPS", raising=False)
    args = importlib.import_module(f"stepdistill_kernels.{name}.bench").make_args((3, 5, 7, 9), torch.float32, device)
    results = []
    for flag in (True, False):
        with ops.use_triton(flag):
            loss = OPS[name](*args)
        assert type(loss.grad_fn).__name__.startswith("Fused") == flag  # the path really taken
        (grad,) = torch.autograd.grad(loss, args[0])
        results.append((loss.detach(), grad))
    (loss_t, grad_t), (loss_r, grad_r) = results
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_t, grad_r, rtol=1e-5, atol=1e-6 * float(grad_r.abs().max()))


def test_cpu_tensors_for_a_compiled_kernel_fail_with_the_fix():
    """The check every launcher makes first: CPU tensors need a kernel decorated in interpreter mode
    (here any non-interpreted object stands in for a kernel compiled because TRITON_INTERPRET came too late)."""
    from stepdistill_kernels.launch import check_launchable

    with pytest.raises(RuntimeError, match="set TRITON_INTERPRET=1 before triton is first imported"):
        check_launchable(torch.zeros(1), object())


@pytest.mark.parametrize("name", KERNELS)
def test_each_loss_has_one_signature_and_the_kernel_package_imports_it(name):
    """The dispatched loss carries its reference's signature and docstring (written once), and the kernel's
    specification is that same function object: the kernels import the library, not the reverse."""
    loss = OPS[name]
    reference = importlib.import_module(f"stepdistill_kernels.{name}.reference")
    spec = getattr(reference, loss.__name__)
    assert loss.reference is spec and spec.__module__.startswith("stepdistill.losses.")
    assert inspect.signature(loss) == inspect.signature(spec) and loss.__doc__ == spec.__doc__


def test_importing_the_library_loads_neither_the_kernels_nor_triton():
    import subprocess
    import sys

    code = "import sys, stepdistill, stepdistill.losses; print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('stepdistill_kernels', 'triton')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.parametrize("name", KERNELS)
def test_fused_entry_points_carry_the_reference_signature(name):
    """The fused function is declared by its reference (`kernels.common.fused_entry`): no second copy of
    the signature to drift, keyword arguments and defaults bound as the reference binds them."""
    fused = getattr(importlib.import_module(f"stepdistill_kernels.{name}.function"), OPS[name].__name__ + "_fused")
    assert inspect.signature(fused) == inspect.signature(OPS[name].reference)
