"""Autograd wrapper of the fused SiD kernels: loss in one pass, gradients recomputed in one pass."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import as_rows, fused_entry
from .reference import sid_loss
from .triton_kernel import sid_backward, sid_forward


class FusedSiDLoss(torch.autograd.Function):
    """mean_{b,n} d (e - alpha d) / omega_b, d = y_real - y_fake, e = y_real - x, omega_b detached.

    Saves the three inputs as given (references to tensors the caller already holds, so no new
    input-sized memory; a non-contiguous input is copied again in backward, not kept) and omega (B,).
    Backward writes only the gradients autograd asks for, with grad_output folded into the same pass,
    so no separate grad_output == 1 path is needed.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float) -> torch.Tensor:
        loss, omega = sid_forward(*as_rows(x, y_real, y_fake), alpha)
        ctx.alpha = alpha
        ctx.save_for_backward(x, y_real, y_fake, omega)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor):
        x, y_real, y_fake, omega = ctx.saved_tensors
        grads = sid_backward(*as_rows(x, y_real, y_fake), omega, ctx.alpha, grad_output,
                             needs=tuple(ctx.needs_input_grad[:3]))
        shaped = [g.view(x.shape) if g is not None else None for g in grads]
        return shaped[0], shaped[1], shaped[2], None


sid_loss_fused = fused_entry(sid_loss, FusedSiDLoss)
