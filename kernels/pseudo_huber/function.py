"""Autograd wrapper of the fused pseudo-Huber kernels: the gradient is formed in the forward pass."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import as_rows, fused_entry, is_one, per_sample
from .reference import pseudo_huber_loss
from .triton_kernel import pseudo_huber_forward


class FusedPseudoHuberLoss(torch.autograd.Function):
    """mean_b w_b (sqrt(||pred_b - target_b||^2 + c^2) - c).

    Saves d loss / d pred (one pred-sized tensor, pred's dtype) and, when the weight needs a gradient,
    the per-sample distances (B,). d loss / d target is the negated pred gradient: nothing more to keep.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, c: float, weight: torch.Tensor | float | None):
        w = per_sample(1.0 if weight is None else weight, pred.shape[0], pred)
        loss, grad, per = pseudo_huber_forward(*as_rows(pred, target), float(c), w)
        ctx.shape, ctx.target_dtype, ctx.batch = pred.shape, target.dtype, pred.shape[0]
        ctx.save_for_backward(grad, per if ctx.needs_input_grad[3] else None)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor):
        grad, per = ctx.saved_tensors
        if not is_one(grad_output):
            grad = grad * grad_output
        grad = grad.view(ctx.shape)
        grad_target = -grad.to(ctx.target_dtype) if ctx.needs_input_grad[1] else None
        grad_weight = per * grad_output / ctx.batch if per is not None else None
        return grad if ctx.needs_input_grad[0] else None, grad_target, None, grad_weight


pseudo_huber_loss_fused = fused_entry(pseudo_huber_loss, FusedPseudoHuberLoss)
