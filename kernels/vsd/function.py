"""Autograd wrapper of the fused VSD kernel: the gradient is formed in the forward pass (Liger's pattern)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import as_rows, fused_entry, is_one, per_sample
from .reference import vsd_loss
from .triton_kernel import vsd_forward


class FusedVSDLoss(torch.autograd.Function):
    """0.5 * mean((x - sg(x - grad))^2), grad = nan_to_num(w_b * (x0_fake^cfg - x0_real^cfg)).

    Forward returns the float32 loss and saves d loss/dx = grad / numel (one x-sized tensor, x's dtype);
    backward returns it, scaled only when grad_output != 1. Predictions and weight get no gradient.
    """

    @staticmethod
    def forward(ctx, x, x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond, s_real, s_fake, weight):
        rows = as_rows(x, x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond)
        loss, grad = vsd_forward(*rows, s_real, s_fake, per_sample(weight, x.shape[0], x))
        ctx.shape = x.shape
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        if not is_one(grad_output):
            grad = grad * grad_output
        return grad.view(ctx.shape), None, None, None, None, None, None, None


vsd_loss_fused = fused_entry(vsd_loss, FusedVSDLoss)
