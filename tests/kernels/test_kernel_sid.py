"""Fused SiD generator loss vs its reference: value and the gradients to x, y_real and y_fake."""

import pytest
import torch

from stepdistill_kernels.sid.bench import make_args
from stepdistill_kernels.sid.function import sid_loss_fused
from stepdistill_kernels.sid.reference import sid_loss


@pytest.mark.parametrize("scale", [1.0, 3.7], ids=["grad_out=1", "grad_out=3.7"])
def test_fused_matches_reference(device, shape, dtype, scale, check):
    check(sid_loss_fused, sid_loss, make_args(shape, dtype, device), dtype, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(device, dtype, check):
    args = make_args((3, 5, 7, 9), dtype, device, layout="strided")
    assert not args[0].is_contiguous()
    check(sid_loss_fused, sid_loss, args, dtype, 3.7)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_other_alphas_and_only_some_gradients(device, alpha, check):
    """alpha = 1 is SiD-LSG's form; y_fake without grad checks the skipped writes."""
    x, y_real, y_fake, _ = make_args((2, 37), torch.float32, device)
    check(sid_loss_fused, sid_loss, (x, y_real, y_fake.detach(), alpha), torch.float32, 3.7)


def test_omega_is_clipped_and_translation_invariance(device, check):
    """x == y_real gives omega = 1e-5 (clipped, finite); shifting all three inputs leaves the loss unchanged,
    so the three gradients sum to zero."""
    x, y_real, y_fake, alpha = make_args((3, 5, 7, 9), torch.float32, device)
    with torch.no_grad():
        y_real[0] = x[0]
    check(sid_loss_fused, sid_loss, (x, y_real, y_fake, alpha), torch.float32)
    total = x.grad + y_real.grad + y_fake.grad
    assert float(total.abs().max()) <= 1e-6 * float(x.grad.abs().max())


def test_official_elementwise_form():
    """The reference is SiD's official elementwise loss (`sid_loss.py`), averaged over all elements."""
    x, y_real, y_fake, alpha = make_args((3, 5, 7, 9), torch.float32, "cpu")
    with torch.no_grad():
        w = (x - y_real).abs().mean(dim=[1, 2, 3], keepdim=True).clip(min=0.00001)
    official = (y_real - y_fake) * ((y_real - x) - alpha * (y_real - y_fake)) / w
    torch.testing.assert_close(sid_loss(x, y_real, y_fake, alpha), official.mean())
