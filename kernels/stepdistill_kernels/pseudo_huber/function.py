"""Autograd wrapper of the fused pseudo-Huber kernels: the loss in the forward, gradients recomputed in one pass."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import fused_entry, in_layout, per_sample, rows
from .reference import pseudo_huber_loss
from .triton_kernel import pseudo_huber_backward, pseudo_huber_forward


class FusedPseudoHuberLoss(torch.autograd.Function):
    """mean_b w_b (sqrt(||pred_b - target_b||^2 + c^2) - c).

    Saves pred and target as given (references: no new input-sized memory) and three (B,) float32 vectors;
    backward writes fresh tensors for only the gradients autograd asks for (pred, target, a tensor weight).
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, c: float, weight: torch.Tensor | float | None):
        w = per_sample(1.0 if weight is None else weight, pred.shape[0], pred)
        loss, coef, per = pseudo_huber_forward(*map(rows, in_layout((pred, target))), float(c), w)
        ctx.save_for_backward(pred, target, coef, per)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor):
        pred, target, coef, per = ctx.saved_tensors
        laid = in_layout((pred, target))
        need_pred, need_target, _, need_weight = ctx.needs_input_grad
        grads = [torch.empty_like(laid[0]) if need_pred else None, torch.empty_like(laid[1]) if need_target else None,
                 torch.empty_like(per) if need_weight else None]
        pseudo_huber_backward(*map(rows, laid), coef, per, grad_output,
                              (rows(grads[0]) if need_pred else None, rows(grads[1]) if need_target else None,
                               grads[2]))
        return grads[0], grads[1], None, grads[2]


pseudo_huber_loss_fused = fused_entry(pseudo_huber_loss, FusedPseudoHuberLoss)
