"""What a real training step asks of the fused losses beyond parity: fp16 gradients under a loss scale,
gradients the caller may change in place, no host sync in backward, any batch size, channels_last inputs."""

import importlib
import re
from pathlib import Path

import pytest
import torch

from stepdistill_kernels import KERNELS
from stepdistill_kernels.common import in_layout
from stepdistill_kernels.launch import MAX_GRID, sample_grid
from stepdistill_kernels.testing import loss_and_grads, loss_scale_errors, recorded_launches

LOSS_SCALE = 65536.0  # GradScaler's initial scale
LAUNCHES = {"dmd": 5, "vsd": 3, "sid": 3, "pseudo_huber": 3}  # kernel launches per forward + backward


def bench(name: str):
    return importlib.import_module(f"stepdistill_kernels.{name}.bench")


@pytest.mark.parametrize("name", KERNELS)
def test_fp16_gradients_under_a_loss_scale_are_as_accurate_as_eager(device, name):
    """Latents in fp16 with GradScaler's 65536: every gradient within 2x of eager's error against a float32
    computation from the same fp16 values, and no more entries flushed to zero than eager's. (A gradient
    stored as g / numel in fp16 is subnormal here: numel = 2^17.)"""
    torch.manual_seed(0)
    args16 = bench(name).make_args((8, 4, 64, 64), torch.float16, device)
    for g in loss_scale_errors(bench(name).REFERENCE, bench(name).FUSED, args16, LOSS_SCALE):
        assert g["fused_rel_l2"] <= 2 * g["eager_rel_l2"], g
        assert g["fused_flushed"] <= g["eager_flushed"], g
    assert all(g.dtype == torch.float16 for g in loss_and_grads(bench(name).FUSED, args16)[1])


@pytest.mark.parametrize("name", KERNELS)
def test_changing_a_returned_gradient_in_place_never_breaks_a_later_backward(device, name):
    args = bench(name).make_args((3, 5, 7, 9), torch.float32, device)
    leaves = [a for a in args if torch.is_tensor(a) and a.requires_grad]
    loss = bench(name).FUSED(*args)
    first = torch.autograd.grad(loss, leaves, retain_graph=True)
    expected = [g.clone() for g in first]
    for g in first:
        g.mul_(-7.0)  # a caller's in-place use of what autograd returned
    loss.backward(retain_graph=True)
    for leaf in leaves:
        leaf.grad.zero_()  # optimizer.zero_grad(set_to_none=False)
    loss.backward()
    for leaf, g in zip(leaves, expected, strict=True):
        torch.testing.assert_close(leaf.grad, g, rtol=0, atol=0)


class HostSync(RuntimeError):
    """A tensor -> Python value conversion: a CUDA host sync, which also breaks graph capture."""


def forbidden(method: str):
    def raise_(self, *args, **kwargs):
        raise HostSync(f"Tensor.{method} in a fused loss")

    return raise_


@pytest.mark.parametrize("name", KERNELS)
def test_forward_and_backward_never_read_a_tensor_on_the_host(device, name):
    args = bench(name).make_args((3, 5, 7, 9), torch.float32, device)
    expected = loss_and_grads(bench(name).FUSED, args, 3.7)
    with pytest.MonkeyPatch.context() as patch:
        for method in ("item", "tolist", "__float__", "__int__", "__bool__"):
            patch.setattr(torch.Tensor, method, forbidden(method))
        with pytest.raises(HostSync):  # the patch is live
            float(torch.ones(()))
        loss, grads = loss_and_grads(bench(name).FUSED, args, 3.7)
    torch.testing.assert_close(loss, expected[0], rtol=0, atol=0)
    for g, e in zip(grads, expected[1], strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_no_item_call_in_the_kernel_package():
    """The static side of the check above: no `.item()` anywhere a loss runs."""
    root = Path(importlib.import_module("stepdistill_kernels").__file__).parent
    sources = [p for p in root.rglob("*.py") if p.name not in ("benchmark.py", "testing.py", "bench.py")]
    assert len(sources) >= 14
    assert not [p for p in sources if re.search(r"\.item\(\)", p.read_text())]


@pytest.mark.parametrize("name", KERNELS)
def test_seventy_thousand_rows_fit_cudas_grid(name):
    """70,000 samples (CUDA caps grid axes 1 and 2 at 65,535): every launch of forward and backward has a
    grid CUDA accepts. (Recorded, not run: the interpreter would take minutes over 70,000 programs.)"""
    assert sample_grid(70_000, 3, 4) == (70_000, 1)
    with pytest.raises(ValueError, match="grid axis 0"):
        sample_grid(2**20, 2**22, 1024)
    args = bench(name).make_args((70_000, 3), torch.float32, "cpu")
    with recorded_launches(name) as grids:
        bench(name).FUSED(*args).backward()
    assert len(grids) == LAUNCHES[name]
    assert all(len(g) == 1 and 1 <= g[0] <= MAX_GRID for g in grids), grids
    assert max(g[0] for g in grids) == 70_000


@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 3, 4, 5, 6)], ids=["channels_last", "channels_last_3d"])
@pytest.mark.parametrize("name", KERNELS)
def test_channels_last_inputs_are_taken_as_they_are(device, check, name, shape):
    args = bench(name).make_args(shape, torch.bfloat16, device, layout="channels_last")
    tensors = tuple(a for a in args if torch.is_tensor(a) and a.ndim > 1)
    assert not tensors[0].is_contiguous()
    assert all(a is b for a, b in zip(in_layout(tensors), tensors, strict=True))  # no copy
    check(bench(name).FUSED, bench(name).REFERENCE, args, torch.bfloat16, 3.7)
    leaf = next(a for a in args if torch.is_tensor(a) and a.requires_grad)
    assert leaf.grad.stride() == leaf.stride()  # the gradient in the input's own layout


@pytest.mark.parametrize("name", KERNELS)
def test_mixed_layouts_are_copied_into_the_first_inputs(device, check, name):
    """A channels_last generator output with contiguous predictions: same result (the others are copied)."""
    args = list(bench(name).make_args((3, 5, 7, 9), torch.float32, device))
    args[0] = args[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_(args[0].requires_grad)
    tensors = tuple(a for a in args if torch.is_tensor(a) and a.ndim > 1)
    laid = in_layout(tensors)
    assert laid[0] is tensors[0] and all(t.stride() == tensors[0].stride() for t in laid)
    check(bench(name).FUSED, bench(name).REFERENCE, tuple(args), torch.float32, 3.7)
