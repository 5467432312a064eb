"""Autograd wrapper of the fused SiD kernels: loss in one pass, gradients recomputed in one pass."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import fused_entry, in_layout, rows
from .reference import sid_loss
from .triton_kernel import sid_backward, sid_forward


class FusedSiDLoss(torch.autograd.Function):
    """mean_{b,n} d (e - alpha d) / omega_b, d = y_real - y_fake, e = y_real - x, omega_b detached.

    Saves the three inputs as given (references to tensors the caller already holds, so no new
    input-sized memory; an input outside the shared layout is copied again in backward, not kept) and
    omega (B,). Backward writes fresh tensors for only the gradients autograd asks for, with grad_output
    folded into the same pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float) -> torch.Tensor:
        loss, omega = sid_forward(*map(rows, in_layout((x, y_real, y_fake))), alpha)
        ctx.alpha = alpha
        ctx.save_for_backward(x, y_real, y_fake, omega)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor):
        *tensors, omega = ctx.saved_tensors
        laid = in_layout(tuple(tensors))
        grads = [torch.empty_like(t) if need else None for t, need in zip(laid, ctx.needs_input_grad[:3])]
        sid_backward(*map(rows, laid), omega, ctx.alpha, grad_output,
                     tuple(rows(g) if g is not None else None for g in grads))
        return grads[0], grads[1], grads[2], None


sid_loss_fused = fused_entry(sid_loss, FusedSiDLoss)
