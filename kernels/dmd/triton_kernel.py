"""DMD loss and gradient in two launches: a two-phase row reduction.

Layout: every input is a contiguous (B, N) view; program (i, b) owns elements [i*BLOCK, (i+1)*BLOCK)
of sample b. The per-sample normaliser needs the whole row before any gradient can be formed, so:
  phase 1  partial[b, i] = sum_{n in block i} |x_bn - x0_real_bn|
  phase 2  norm_b = sum_i partial[b, i] / N      (each program re-adds its row's partials: no launch in between)
           g      = (x0_fake - x0_real) / norm_b, nan/inf -> 0
           diff   = x - (x - g)                  (== g up to rounding; written so to match F.mse_loss's rounding)
           grad_x = diff / numel                 (d loss / dx, stored in x's dtype)
           loss_partial[b, i] = sum diff^2       (loss = 0.5 * sum(loss_partial) / numel on the host)
All arithmetic is float32 whatever the input dtypes. Re-adding the partials costs each phase-2 program
NUM_BLOCKS extra (L2-resident) loads next to its 3 * BLOCK: 2% at SDXL latents, a third at 1M elements per
sample, where a host-side `partial.sum(1)` (one more launch) would start to pay.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import block_size, check_launchable, load_f32, row_block, row_grid

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # |g| <= FLT_MAX is False exactly for nan and +-inf


@triton.jit
def dmd_norm_kernel(
    x_ptr,  # generated samples x, (B, N) contiguous, any float dtype
    x0_real_ptr,  # real-score x0 prediction, (B, N) contiguous
    partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of |x - x0_real| over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample (grid axis 0)
    BLOCK: tl.constexpr,
):
    i, b = tl.program_id(0), tl.program_id(1)
    idx, mask = row_block(i, b, N, BLOCK)
    x = load_f32(x_ptr, idx, mask)
    real = load_f32(x0_real_ptr, idx, mask)
    tl.store(partial_ptr + b * NUM_BLOCKS + i, tl.sum(tl.abs(x - real), axis=0))


@triton.jit
def dmd_grad_kernel(
    x_ptr,  # generated samples x, (B, N) contiguous
    x0_real_ptr,  # real-score x0 prediction, (B, N)
    x0_fake_ptr,  # fake-score x0 prediction, (B, N)
    partial_ptr,  # in: float32 (B, NUM_BLOCKS) from dmd_norm_kernel
    grad_ptr,  # out: d loss / dx, (B, N) in x's dtype
    loss_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of diff^2 over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample (grid axis 0)
    inv_n,  # 1 / N: torch.mean multiplies by it too
    inv_numel,  # 1 / (B * N): the mean reduction
    BLOCK: tl.constexpr,
    NUM_BLOCKS_POW2: tl.constexpr,  # NUM_BLOCKS rounded up to a power of two (tl.arange needs one)
):
    i, b = tl.program_id(0), tl.program_id(1)
    j = tl.arange(0, NUM_BLOCKS_POW2)
    parts = tl.load(partial_ptr + b * NUM_BLOCKS + j, mask=j < NUM_BLOCKS, other=0.0)
    norm = tl.sum(parts, axis=0) * inv_n

    idx, mask = row_block(i, b, N, BLOCK)
    x = load_f32(x_ptr, idx, mask)
    real = load_f32(x0_real_ptr, idx, mask)
    fake = load_f32(x0_fake_ptr, idx, mask)
    g = tl.div_rn(fake - real, norm)  # IEEE division like torch's (plain `/` may lower to an approximate one)
    g = tl.where(tl.abs(g) <= FLT_MAX, g, 0.0)  # nan_to_num(nan=0, posinf=0, neginf=0)
    diff = x - (x - g)
    tl.store(grad_ptr + idx, (diff * inv_numel).to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(loss_partial_ptr + b * NUM_BLOCKS + i, tl.sum(diff * diff, axis=0))


def dmd_forward(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / dx) for contiguous (B, N) inputs: two launches, inputs read 1.67 times on average."""
    check_launchable(x, dmd_grad_kernel)
    batch, n = x.shape
    block = block_size(n)
    grid = row_grid(batch, n, block)
    partial = torch.empty(batch, grid[0], dtype=torch.float32, device=x.device)
    loss_partial = torch.empty_like(partial)
    grad = torch.empty_like(x)
    dmd_norm_kernel[grid](x, x0_real, partial, n, grid[0], BLOCK=block)
    inv_numel = 1.0 / x.numel()
    dmd_grad_kernel[grid](x, x0_real, x0_fake, partial, grad, loss_partial, n, grid[0], 1.0 / n, inv_numel,
                          BLOCK=block, NUM_BLOCKS_POW2=triton.next_power_of_2(grid[0]))
    return loss_partial.sum() * (0.5 * inv_numel), grad
