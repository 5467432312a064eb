"""Fused DMD loss vs its reference (`stepdistill.losses.dmd.dmd_loss`)."""

import pytest
import torch

from stepdistill_kernels.dmd.bench import make_args
from stepdistill_kernels.dmd.function import dmd_loss_fused
from stepdistill_kernels.dmd.reference import dmd_loss


@pytest.mark.parametrize("scale", [1.0, 3.7], ids=["grad_out=1", "grad_out=3.7"])
def test_fused_matches_reference(device, shape, dtype, scale, check):
    check(dmd_loss_fused, dmd_loss, make_args(shape, dtype, device), dtype, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(device, dtype, check):
    args = make_args((3, 5, 7, 9), dtype, device, layout="strided")
    assert not args[0].is_contiguous()
    check(dmd_loss_fused, dmd_loss, args, dtype, 3.7)


def test_mixed_dtypes(device, check):
    """bf16 generator output with the float32 x0 predictions `Denoiser` returns: the gradient is bf16."""
    x, x0_real, x0_fake = make_args((2, 37), torch.bfloat16, device)
    check(dmd_loss_fused, dmd_loss, (x, x0_real.float(), x0_fake.float()), torch.bfloat16)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter (numpy) reports the 0/0 it then zeroes
def test_degenerate_samples_give_zero_gradient(device, check):
    """A sample with x == x0_real (normaliser 0) or an infinite prediction carries no signal, not nan."""
    x, x0_real, x0_fake = make_args((3, 5, 7, 9), torch.float32, device)
    x0_real[0] = x[0].detach()
    x0_fake[1, 0, 0, 0] = float("inf")
    check(dmd_loss_fused, dmd_loss, (x, x0_real, x0_fake), torch.float32)
    assert torch.isfinite(x.grad).all() and float(x.grad[0].abs().max()) == 0.0


def test_fused_gradient_is_grad_over_numel(device):
    """d loss / dx = (x0_fake - x0_real) / mean|x - x0_real| / numel (DMD2's surrogate, Sec. 4.1)."""
    x, x0_real, x0_fake = make_args((3, 5, 7, 9), torch.float32, device)
    dmd_loss_fused(x, x0_real, x0_fake).backward()
    norm = (x.detach() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x.grad, (x0_fake - x0_real) / norm / x.numel(), rtol=1e-4, atol=1e-9)
