"""Autograd wrapper of the fused VSD kernels: the loss in the forward, the gradient recomputed in the backward."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import fused_entry, in_layout, per_sample, rows
from .reference import vsd_loss
from .triton_kernel import vsd_backward, vsd_forward


class FusedVSDLoss(torch.autograd.Function):
    """0.5 * mean((x - sg(x - g))^2), g = nan_to_num(w_b * (x0_fake^cfg - x0_real^cfg)).

    Forward returns the float32 loss and saves the four predictions (references to tensors the caller
    holds: no new input-sized memory) and the float32 (B,) weight. Backward writes a fresh
    d out / dx = g * grad_output / numel in x's dtype. Predictions and weight get no gradient.
    """

    @staticmethod
    def forward(ctx, x, x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond, s_real, s_fake, weight):
        tensors = in_layout((x, x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond))
        w = per_sample(weight, x.shape[0], x)
        loss = vsd_forward(*map(rows, tensors[1:]), s_real, s_fake, w)
        ctx.guidance, ctx.x_dtype = (s_real, s_fake), x.dtype
        ctx.save_for_backward(x0_real_cond, x0_real_uncond, x0_fake_cond, x0_fake_uncond, w)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor):
        *tensors, w = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            preds = in_layout(tuple(tensors))
            grad = torch.empty_like(preds[0], dtype=ctx.x_dtype)  # in the predictions' layout
            vsd_backward(*map(rows, preds), *ctx.guidance, w, grad_output, rows(grad))
        return grad, None, None, None, None, None, None, None


vsd_loss_fused = fused_entry(vsd_loss, FusedVSDLoss)
