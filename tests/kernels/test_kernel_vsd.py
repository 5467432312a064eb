"""Fused VSD (SwiftBrush, both guidances fused) vs its reference."""

import pytest
import torch

from stepdistill_kernels.dmd.reference import dmd_loss
from stepdistill_kernels.vsd.bench import make_args
from stepdistill_kernels.vsd.function import vsd_loss_fused
from stepdistill_kernels.vsd.reference import vsd_loss


@pytest.mark.parametrize("scale", [1.0, 3.7], ids=["grad_out=1", "grad_out=3.7"])
def test_fused_matches_reference(device, shape, dtype, scale, check):
    check(vsd_loss_fused, vsd_loss, make_args(shape, dtype, device), dtype, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(device, dtype, check):
    args = make_args((3, 5, 7, 9), dtype, device, layout="strided")
    assert not args[0].is_contiguous()
    check(vsd_loss_fused, vsd_loss, args, dtype, 3.7)


def test_scalar_weight_and_no_guidance(device, check):
    x, rc, ru, fc, fu, *_ = make_args((2, 37), torch.float32, device)
    check(vsd_loss_fused, vsd_loss, (x, rc, ru, fc, fu, 1.0, 1.0, 0.25), torch.float32)


@pytest.mark.parametrize("s_real, s_fake", [(4.5, 4.5), (4.5, 1.0), (1.0, 7.5)])
def test_gradient_is_weighted_guided_difference(device, s_real, s_fake):
    """d loss / dx = w_b (x0_fake^cfg - x0_real^cfg) / numel, with CFG = uncond + s (cond - uncond); the
    two scales differ in SwiftBrush-style runs (a guided teacher, an unguided fake score), so each must go
    to its own prediction."""
    x, rc, ru, fc, fu, _, _, w = make_args((3, 5, 7, 9), torch.float32, device)
    vsd_loss_fused(x, rc, ru, fc, fu, s_real, s_fake, w).backward()
    real, fake = ru + s_real * (rc - ru), fu + s_fake * (fc - fu)
    expected = w.view(-1, 1, 1, 1) * (fake - real) / x.numel()
    torch.testing.assert_close(x.grad, expected, rtol=1e-4, atol=1e-9)


def test_without_guidance_and_dmd_weight_it_is_dmd():
    """With s = 1 and w_b = 1 / mean|x - x0_real| the VSD gradient is DMD's: one family, two weightings."""
    x, r, _, f, *_ = make_args((3, 5, 7, 9), torch.float32, "cpu")
    w = 1 / (x.detach() - r).abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(vsd_loss(x, r, r, f, f, 1.0, 1.0, w), dmd_loss(x, r, f))
