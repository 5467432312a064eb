"""Pseudo-Huber loss: one reading pass and a one-program epilogue in forward, one pass in backward.

Layout: (B, N) row-major views (`common.rows`); program pid = b * NUM_BLOCKS + i owns elements
[i*BLOCK, (i+1)*BLOCK) of sample b (`launch.sample_block`).
  forward   partial[b, i] = sum_{block} (pred - target)^2                  (sq_norm_kernel)
            S_b = sum_i partial[b, i],  h_b = sqrt(S_b + c^2)              (pseudo_huber_epilogue_kernel)
            per_b = S_b / (h_b + c),  coef_b = w_b / (B h_b),  loss = sum_b w_b per_b / B
  backward  grad_pred = coef_b * grad_output * (pred - target),  grad_target = -grad_pred
            grad_w_b  = per_b * grad_output / B                            (pseudo_huber_backward_kernel)
The backward recomputes pred - target from the saved inputs instead of keeping a pred-sized gradient:
one more read of each input, no buffer between the passes, and a fresh gradient every time.
All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import (COLS, ROWS, block_size, check_launchable, grad_output_f32, load_f32, row_sums, sample_block,
                      sample_grid)


@triton.jit
def sq_norm_kernel(
    pred_ptr,  # predictions (student output), (B, N) rows, any float dtype
    target_ptr,  # targets (teacher / EMA-free student output), (B, N) rows
    partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of (pred - target)^2 over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    _, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    diff = load_f32(pred_ptr, idx, mask) - load_f32(target_ptr, idx, mask)
    tl.store(partial_ptr + pid, tl.sum(diff * diff, axis=0))


@triton.jit
def pseudo_huber_epilogue_kernel(
    partial_ptr,  # float32 (B, NUM_BLOCKS) from sq_norm_kernel
    weight_ptr,  # float32 (B,), w_b
    per_ptr,  # out: float32 (B,), sqrt(S_b + c^2) - c (computed without cancellation)
    coef_ptr,  # out: float32 (B,), w_b / (B sqrt(S_b + c^2))
    loss_ptr,  # out: float32 scalar, mean_b w_b per_b
    B,  # samples
    NUM_BLOCKS,  # partials per sample
    c,  # the pseudo-Huber constant
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    acc = tl.zeros([ROWS], dtype=tl.float32)
    for r0 in range(0, B, ROWS):
        r = r0 + tl.arange(0, ROWS)
        m = r < B
        sq = row_sums(partial_ptr, r, m, NUM_BLOCKS, ROWS, COLS)
        h = tl.sqrt_rn(sq + c * c)  # IEEE square root, like torch
        per = tl.div_rn(sq, h + c)
        w = tl.load(weight_ptr + r, mask=m, other=0.0)
        tl.store(per_ptr + r, per, mask=m)
        tl.store(coef_ptr + r, tl.div_rn(w, B * h), mask=m)
        acc += tl.where(m, w * per, 0.0)
    tl.store(loss_ptr, tl.sum(acc, axis=0) / B)


@triton.jit
def pseudo_huber_backward_kernel(
    pred_ptr,  # predictions, (B, N) rows
    target_ptr,  # targets, (B, N) rows
    coef_ptr,  # float32 (B,), w_b / (B sqrt(S_b + c^2))
    per_ptr,  # float32 (B,), per-sample distances (read only if WRITE_WEIGHT)
    grad_output_ptr,  # float32 (1,), d out / d loss (read here: no host sync)
    grad_pred_ptr,  # out: d out / d pred, (B, N) rows in pred's dtype (unused unless WRITE_PRED)
    grad_target_ptr,  # out: d out / d target, (B, N) rows in target's dtype (unused unless WRITE_TARGET)
    grad_weight_ptr,  # out: float32 (B,), d out / d w (unused unless WRITE_WEIGHT)
    B,  # samples
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    BLOCK: tl.constexpr,
    WRITE_PRED: tl.constexpr,  # skip the writes autograd does not need
    WRITE_TARGET: tl.constexpr,
    WRITE_WEIGHT: tl.constexpr,
):
    pid = tl.program_id(0)
    b, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    go = tl.load(grad_output_ptr)
    if WRITE_PRED or WRITE_TARGET:
        g = (tl.load(coef_ptr + b) * go) * (load_f32(pred_ptr, idx, mask) - load_f32(target_ptr, idx, mask))
        if WRITE_PRED:
            tl.store(grad_pred_ptr + idx, g.to(grad_pred_ptr.dtype.element_ty), mask=mask)
        if WRITE_TARGET:
            tl.store(grad_target_ptr + idx, (-g).to(grad_target_ptr.dtype.element_ty), mask=mask)
    if WRITE_WEIGHT:
        if pid - b * NUM_BLOCKS == 0:  # the sample's first program writes its (B,) entry
            tl.store(grad_weight_ptr + b, tl.load(per_ptr + b) * go / B)


def pseudo_huber_forward(
    pred: torch.Tensor, target: torch.Tensor, c: float, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, coef (B,), per-sample distances (B,)) for (B, N) rows and a float32 (B,) weight: two launches."""
    check_launchable(pred, sq_norm_kernel)
    batch, n = pred.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    partial = torch.empty(batch, blocks, dtype=torch.float32, device=pred.device)
    per, coef = (torch.empty(batch, dtype=torch.float32, device=pred.device) for _ in range(2))
    loss = torch.empty((), dtype=torch.float32, device=pred.device)
    sq_norm_kernel[(programs,)](pred, target, partial, n, blocks, BLOCK=block)
    pseudo_huber_epilogue_kernel[(1,)](partial, weight, per, coef, loss, batch, blocks, float(c), ROWS=ROWS, COLS=COLS)
    return loss, coef, per


def pseudo_huber_backward(
    pred: torch.Tensor, target: torch.Tensor, coef: torch.Tensor, per: torch.Tensor, grad_output: torch.Tensor,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> None:
    """Write the requested gradients ((B, N) rows for pred and target, (B,) for the weight; None: not needed)."""
    batch, n = pred.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    dummies = [g if g is not None else t for g, t in zip(grads, (pred, target, per))]  # never written
    pseudo_huber_backward_kernel[(programs,)](
        pred, target, coef, per, grad_output_f32(grad_output), *dummies, batch, n, blocks, BLOCK=block,
        WRITE_PRED=grads[0] is not None, WRITE_TARGET=grads[1] is not None, WRITE_WEIGHT=grads[2] is not None)
