"""DMD loss in four short launches, its gradient in one; nothing input-sized is stored in between.

Layout: (B, N) row-major views (`common.rows`); program pid = b * NUM_BLOCKS + i owns elements
[i*BLOCK, (i+1)*BLOCK) of sample b (`launch.sample_block`).
  forward   partial[b, i] = sum_{block} |x - x0_real|                       (dmd_norm_partial_kernel)
            norm_b        = sum_i partial[b, i] / N                          (dmd_norm_kernel: one read of the partials)
            g             = (x0_fake - x0_real) / norm_b, nan/inf -> 0
            loss_partial[b, i] = sum_{block} g^2                             (dmd_loss_partial_kernel)
            loss          = 0.5 * sum(loss_partial) / (B N)                  (launch.total_kernel)
  backward  grad_x = g * (grad_output / (B N))                               (dmd_backward_kernel)
The reference's per-element `x - (x - g)` equals g up to one float32 rounding of x - g (below the
float32 summation error of the loss, and of the gradient once rounded to x's dtype). Recomputing g in backward reads x0_real and
x0_fake once more instead of writing and re-reading a stored gradient: the same traffic, no x-sized buffer,
and the gradient rounded once to x's dtype from float32 with the scale applied (a stored 16-bit gradient
divided by B N underflows to fp16 subnormals at latent sizes, which a 65536 loss scale then magnifies).
All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import (COLS, ROWS, block_size, check_launchable, grad_output_f32, load_f32, row_sums,
                      sample_block, sample_grid, total)

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # |g| <= FLT_MAX is False exactly for nan and +-inf


@triton.jit
def dmd_direction(x0_real_ptr, x0_fake_ptr, norm_ptr, b, idx, mask):
    """g = nan_to_num((x0_fake - x0_real) / norm_b) on one block, float32."""
    real = load_f32(x0_real_ptr, idx, mask)
    fake = load_f32(x0_fake_ptr, idx, mask)
    g = tl.div_rn(fake - real, tl.load(norm_ptr + b))  # IEEE division like torch's (`/` may be approximate)
    return tl.where(tl.abs(g) <= FLT_MAX, g, 0.0)  # nan_to_num(nan=0, posinf=0, neginf=0)


@triton.jit
def dmd_norm_partial_kernel(
    x_ptr,  # generated samples x, (B, N) rows, any float dtype
    x0_real_ptr,  # real-score x0 prediction, (B, N) rows
    partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of |x - x0_real| over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    _, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    diff = load_f32(x_ptr, idx, mask) - load_f32(x0_real_ptr, idx, mask)
    tl.store(partial_ptr + pid, tl.sum(tl.abs(diff), axis=0))


@triton.jit
def dmd_norm_kernel(
    partial_ptr,  # float32 (B, NUM_BLOCKS) from dmd_norm_partial_kernel
    norm_ptr,  # out: float32 (B,), mean_n |x - x0_real| per sample
    B,  # samples
    NUM_BLOCKS,  # partials per sample
    inv_n,  # 1 / N: torch.mean multiplies by it too
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    tl.store(norm_ptr + r, row_sums(partial_ptr, r, r < B, NUM_BLOCKS, ROWS, COLS) * inv_n, mask=r < B)


@triton.jit
def dmd_loss_partial_kernel(
    x0_real_ptr,  # real-score x0 prediction, (B, N) rows
    x0_fake_ptr,  # fake-score x0 prediction, (B, N) rows
    norm_ptr,  # float32 (B,) from dmd_norm_kernel
    loss_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of g^2 over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    g = dmd_direction(x0_real_ptr, x0_fake_ptr, norm_ptr, b, idx, mask)
    tl.store(loss_partial_ptr + pid, tl.sum(g * g, axis=0))


@triton.jit
def dmd_backward_kernel(
    x0_real_ptr,  # real-score x0 prediction, (B, N) rows
    x0_fake_ptr,  # fake-score x0 prediction, (B, N) rows
    norm_ptr,  # float32 (B,) saved by the forward
    grad_output_ptr,  # float32 (1,), d out / d loss (read here: no host sync)
    grad_ptr,  # out: d out / dx, (B, N) rows in x's dtype, a fresh tensor
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    inv_numel,  # 1 / (B * N): the mean reduction
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    g = dmd_direction(x0_real_ptr, x0_fake_ptr, norm_ptr, b, idx, mask)
    scale = tl.load(grad_output_ptr) * inv_numel  # float32: the loss scale never meets a 16-bit value
    tl.store(grad_ptr + idx, (g * scale).to(grad_ptr.dtype.element_ty), mask=mask)


def dmd_forward(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, norm (B,) float32) for (B, N) rows: four launches, no host sync."""
    check_launchable(x, dmd_loss_partial_kernel)
    batch, n = x.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    partial = torch.empty(batch, blocks, dtype=torch.float32, device=x.device)
    norm = torch.empty(batch, dtype=torch.float32, device=x.device)
    dmd_norm_partial_kernel[(programs,)](x, x0_real, partial, n, blocks, BLOCK=block)
    dmd_norm_kernel[(triton.cdiv(batch, ROWS),)](partial, norm, batch, blocks, 1.0 / n, ROWS=ROWS, COLS=COLS)
    dmd_loss_partial_kernel[(programs,)](x0_real, x0_fake, norm, partial, n, blocks, BLOCK=block)  # reuses `partial`
    return total(partial, 0.5 / x.numel()), norm


def dmd_backward(x0_real: torch.Tensor, x0_fake: torch.Tensor, norm: torch.Tensor, grad_output: torch.Tensor,
                 grad: torch.Tensor) -> None:
    """Write d out / dx into `grad`'s (B, N) rows: one launch."""
    batch, n = grad.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    dmd_backward_kernel[(programs,)](x0_real, x0_fake, norm, grad_output_f32(grad_output), grad, n, blocks,
                                     1.0 / (batch * n), BLOCK=block)

