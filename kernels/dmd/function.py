"""Autograd wrapper of the fused DMD kernel: the gradient is formed in the forward pass (Liger's pattern)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import as_rows, fused_entry, is_one
from .reference import dmd_loss
from .triton_kernel import dmd_forward


class FusedDMDLoss(torch.autograd.Function):
    """0.5 * mean((x - sg(x - grad))^2) with grad = nan_to_num((x0_fake - x0_real) / mean_n|x - x0_real|).

    Forward returns the float32 loss and saves d loss/dx = grad / numel (one x-sized tensor, x's dtype);
    backward returns it, scaled only when grad_output != 1. x0_real and x0_fake get no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
        rows = as_rows(x, x0_real, x0_fake)
        loss, grad = dmd_forward(*rows)
        ctx.shape = x.shape
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (grad,) = ctx.saved_tensors
        if not is_one(grad_output):
            grad = grad * grad_output
        return grad.view(ctx.shape), None, None


dmd_loss_fused = fused_entry(dmd_loss, FusedDMDLoss)
