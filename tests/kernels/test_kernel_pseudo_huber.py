"""Fused pseudo-Huber consistency loss (iCT) vs its reference: gradients to pred, target and weight."""

import math

import pytest
import torch

from stepdistill_kernels.pseudo_huber.bench import make_args
from stepdistill_kernels.pseudo_huber.function import pseudo_huber_loss_fused
from stepdistill_kernels.pseudo_huber.reference import pseudo_huber_loss


@pytest.mark.parametrize("scale", [1.0, 3.7], ids=["grad_out=1", "grad_out=3.7"])
def test_fused_matches_reference(device, shape, dtype, scale, check):
    pred, target, c, weight = make_args(shape, dtype, device)
    check(pseudo_huber_loss_fused, pseudo_huber_loss, (pred, target.requires_grad_(), c, weight), dtype, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_inputs(device, dtype, check):
    args = make_args((3, 5, 7, 9), dtype, device, layout="strided")
    assert not args[0].is_contiguous()
    check(pseudo_huber_loss_fused, pseudo_huber_loss, args, dtype, 3.7)


@pytest.mark.parametrize("weight", [None, 2.0, "tensor"])
def test_weights_and_weight_gradient(device, weight, check):
    pred, target, c, w = make_args((2, 37), torch.float32, device)
    weight = w.requires_grad_() if weight == "tensor" else weight
    check(pseudo_huber_loss_fused, pseudo_huber_loss, (pred, target, c, weight), torch.float32, 3.7)


def test_near_zero_residual_is_stable_and_quadratic(device, check):
    """||pred - target|| << c: the loss is ||d||^2 / (2c) (no cancellation), the gradient w d / (B c)."""
    pred, target, _, weight = make_args((3, 5, 7, 9), torch.float32, device)
    with torch.no_grad():
        pred.copy_(target + 1e-6 * torch.randn_like(target))
    c = 0.00054 * math.sqrt(5 * 7 * 9)
    check(pseudo_huber_loss_fused, pseudo_huber_loss, (pred, target, c, weight), torch.float32)
    sq = (pred.detach() - target).square().flatten(1).sum(1)
    torch.testing.assert_close(pseudo_huber_loss(pred, target, c, weight), (weight * sq / (2 * c)).mean(), rtol=1e-4, atol=0)
