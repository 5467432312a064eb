"""Pseudo-Huber loss and its gradient: a two-phase row reduction.

Layout: contiguous (B, N) views; program (i, b) owns elements [i*BLOCK, (i+1)*BLOCK) of sample b.
  phase 1  partial[b, i] = sum_{block} (pred - target)^2
           host (B-sized): S_b = sum_i partial[b, i],  h_b = sqrt(S_b + c^2)
                           loss = mean_b w_b S_b / (h_b + c),  coef_b = w_b / (B h_b)
  phase 2  grad_pred = coef_b * (pred - target)     (stored in pred's dtype; grad_target = -grad_pred)
All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import block_size, check_launchable, load_f32, row_block, row_grid


@triton.jit
def sq_norm_kernel(
    pred_ptr,  # predictions (student output), (B, N) contiguous, any float dtype
    target_ptr,  # targets (teacher / EMA-free student output), (B, N)
    partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of (pred - target)^2 over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample (grid axis 0)
    BLOCK: tl.constexpr,
):
    i, b = tl.program_id(0), tl.program_id(1)
    idx, mask = row_block(i, b, N, BLOCK)
    p = load_f32(pred_ptr, idx, mask)
    t = load_f32(target_ptr, idx, mask)
    diff = p - t
    tl.store(partial_ptr + b * NUM_BLOCKS + i, tl.sum(diff * diff, axis=0))


@triton.jit
def scaled_diff_kernel(
    pred_ptr,  # predictions, (B, N) contiguous
    target_ptr,  # targets, (B, N)
    coef_ptr,  # float32 (B,), w_b / (B sqrt(S_b + c^2))
    grad_ptr,  # out: d loss / d pred, (B, N) in pred's dtype
    N,  # elements per sample
    BLOCK: tl.constexpr,
):
    i, b = tl.program_id(0), tl.program_id(1)
    idx, mask = row_block(i, b, N, BLOCK)
    p = load_f32(pred_ptr, idx, mask)
    t = load_f32(target_ptr, idx, mask)
    grad = tl.load(coef_ptr + b) * (p - t)
    tl.store(grad_ptr + idx, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def pseudo_huber_forward(
    pred: torch.Tensor, target: torch.Tensor, c: float, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d loss / d pred, per-sample d(pred_b, target_b) (B,)) for contiguous (B, N) inputs and a
    float32 (B,) weight: two launches plus a few (B,)-sized ops."""
    check_launchable(pred, scaled_diff_kernel)
    batch, n = pred.shape
    block = block_size(n)
    grid = row_grid(batch, n, block)
    partial = torch.empty(batch, grid[0], dtype=torch.float32, device=pred.device)
    sq_norm_kernel[grid](pred, target, partial, n, grid[0], BLOCK=block)
    sq = partial.sum(1)
    h = torch.sqrt(sq + c * c)
    per = sq / (h + c)
    grad = torch.empty_like(pred)
    scaled_diff_kernel[grid](pred, target, (weight / (batch * h)).contiguous(), grad, n, BLOCK=block)
    return (weight * per).mean(), grad, per
