"""Autograd wrapper of the fused DMD kernels: the loss in the forward, the gradient recomputed in the backward."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..common import fused_entry, in_layout, rows
from .reference import dmd_loss
from .triton_kernel import dmd_backward, dmd_forward


class FusedDMDLoss(torch.autograd.Function):
    """0.5 * mean((x - sg(x - g))^2) with g = nan_to_num((x0_fake - x0_real) / mean_n|x - x0_real|).

    Forward returns the float32 loss and saves the two predictions (references to tensors the caller
    holds: no new input-sized memory) and the per-sample normaliser (B,). Backward writes a fresh
    d out / dx = g * grad_output / numel in x's dtype. x0_real and x0_fake get no gradient.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
        loss, norm = dmd_forward(*map(rows, in_layout((x, x0_real, x0_fake))))
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(x0_real, x0_fake, norm)
        return loss

    @staticmethod
    @once_differentiable  # no double backward: the gradient comes from a kernel autograd cannot see into
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        x0_real, x0_fake, norm = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        x0_real, x0_fake = in_layout((x0_real, x0_fake))
        grad = torch.empty_like(x0_real, dtype=ctx.x_dtype)  # in the predictions' layout (x's unless it was copied)
        dmd_backward(rows(x0_real), rows(x0_fake), norm, grad_output, rows(grad))
        return grad, None, None


dmd_loss_fused = fused_entry(dmd_loss, FusedDMDLoss)
