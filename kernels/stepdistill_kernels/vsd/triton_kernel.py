"""VSD loss in two launches, its gradient in one; nothing input-sized is stored in between.

Layout: (B, N) row-major views (`common.rows`); program pid = b * NUM_BLOCKS + i owns elements
[i*BLOCK, (i+1)*BLOCK) of sample b (`launch.sample_block`).
  x0_real = ru + s_real * (rc - ru),  x0_fake = fu + s_fake * (fc - fu)    (CFG, uncond + s (cond - uncond))
  g       = w_b * (x0_fake - x0_real), nan/inf -> 0
  forward   loss_partial[b, i] = sum_{block} g^2 ;  loss = 0.5 * sum(loss_partial) / (B N)
  backward  grad_x = g * (grad_output / (B N))       (recomputed from the four predictions)
The reference's `x - (x - g)` equals g up to one float32 rounding, so x itself is never read. Recomputing g
reads the predictions twice where a stored gradient would be written once and read once; in exchange no
x-sized buffer lives between the passes and the gradient is rounded once, from float32, with the loss
scale applied (see dmd/triton_kernel.py). All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import block_size, check_launchable, grad_output_f32, load_f32, sample_block, sample_grid, total

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # |g| <= FLT_MAX is False exactly for nan and +-inf


@triton.jit
def vsd_direction(real_cond_ptr, real_uncond_ptr, fake_cond_ptr, fake_uncond_ptr, weight_ptr, s_real, s_fake,
                  b, idx, mask):
    """g = nan_to_num(w_b * (x0_fake^cfg - x0_real^cfg)) on one block, float32."""
    rc = load_f32(real_cond_ptr, idx, mask)
    ru = load_f32(real_uncond_ptr, idx, mask)
    fc = load_f32(fake_cond_ptr, idx, mask)
    fu = load_f32(fake_uncond_ptr, idx, mask)
    g = tl.load(weight_ptr + b) * ((fu + s_fake * (fc - fu)) - (ru + s_real * (rc - ru)))
    return tl.where(tl.abs(g) <= FLT_MAX, g, 0.0)  # nan_to_num(nan=0, posinf=0, neginf=0)


@triton.jit
def vsd_loss_partial_kernel(
    real_cond_ptr,  # teacher x0 prediction with the condition, (B, N) rows, any float dtype
    real_uncond_ptr,  # teacher x0 prediction without it, (B, N) rows
    fake_cond_ptr,  # fake (LoRA) score x0 prediction with the condition, (B, N) rows
    fake_uncond_ptr,  # fake score x0 prediction without it, (B, N) rows
    weight_ptr,  # float32 (B,), w(t) per sample
    loss_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of g^2 over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    s_real,  # teacher guidance scale
    s_fake,  # fake-score guidance scale
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    g = vsd_direction(real_cond_ptr, real_uncond_ptr, fake_cond_ptr, fake_uncond_ptr, weight_ptr, s_real, s_fake,
                      b, idx, mask)
    tl.store(loss_partial_ptr + pid, tl.sum(g * g, axis=0))


@triton.jit
def vsd_backward_kernel(
    real_cond_ptr,  # teacher x0 prediction with the condition, (B, N) rows
    real_uncond_ptr,  # teacher x0 prediction without it, (B, N) rows
    fake_cond_ptr,  # fake score x0 prediction with the condition, (B, N) rows
    fake_uncond_ptr,  # fake score x0 prediction without it, (B, N) rows
    weight_ptr,  # float32 (B,), w(t) per sample
    grad_output_ptr,  # float32 (1,), d out / d loss (read here: no host sync)
    grad_ptr,  # out: d out / dx, (B, N) rows in x's dtype, a fresh tensor
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    s_real,  # teacher guidance scale
    s_fake,  # fake-score guidance scale
    inv_numel,  # 1 / (B * N): the mean reduction
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    b, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    g = vsd_direction(real_cond_ptr, real_uncond_ptr, fake_cond_ptr, fake_uncond_ptr, weight_ptr, s_real, s_fake,
                      b, idx, mask)
    scale = tl.load(grad_output_ptr) * inv_numel  # float32: the loss scale never meets a 16-bit value
    tl.store(grad_ptr + idx, (g * scale).to(grad_ptr.dtype.element_ty), mask=mask)


def vsd_forward(real_cond: torch.Tensor, real_uncond: torch.Tensor, fake_cond: torch.Tensor,
                fake_uncond: torch.Tensor, s_real: float, s_fake: float, weight: torch.Tensor) -> torch.Tensor:
    """The loss for (B, N) rows and a float32 (B,) weight: two launches, no host sync."""
    check_launchable(real_cond, vsd_loss_partial_kernel)
    batch, n = real_cond.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    partial = torch.empty(batch, blocks, dtype=torch.float32, device=real_cond.device)
    vsd_loss_partial_kernel[(programs,)](real_cond, real_uncond, fake_cond, fake_uncond, weight, partial, n, blocks,
                                         float(s_real), float(s_fake), BLOCK=block)
    return total(partial, 0.5 / real_cond.numel())


def vsd_backward(real_cond: torch.Tensor, real_uncond: torch.Tensor, fake_cond: torch.Tensor,
                 fake_uncond: torch.Tensor, s_real: float, s_fake: float, weight: torch.Tensor,
                 grad_output: torch.Tensor, grad: torch.Tensor) -> None:
    """Write d out / dx into `grad`'s (B, N) rows: one launch."""
    batch, n = grad.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    vsd_backward_kernel[(programs,)](real_cond, real_uncond, fake_cond, fake_uncond, weight,
                                     grad_output_f32(grad_output), grad, n, blocks, float(s_real), float(s_fake),
                                     1.0 / (batch * n), BLOCK=block)
