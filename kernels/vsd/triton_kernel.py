"""VSD loss and gradient in a single pass over the five inputs (no per-sample reduction is needed).

Layout: contiguous (B, N) views; program (i, b) owns elements [i*BLOCK, (i+1)*BLOCK) of sample b.
  x0_real = ru + s_real * (rc - ru),  x0_fake = fu + s_fake * (fc - fu)    (CFG, uncond + s (cond - uncond))
  g       = w_b * (x0_fake - x0_real), nan/inf -> 0
  diff    = x - (x - g)          (== g up to rounding; matches F.mse_loss(x, sg(x - g)) elementwise)
  grad_x  = diff / numel         (stored in x's dtype)
  loss_partial[b, i] = sum diff^2     (loss = 0.5 * sum(loss_partial) / numel on the host)
All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import block_size, check_launchable, load_f32, row_block, row_grid

FLT_MAX = tl.constexpr(3.4028234663852886e38)  # |g| <= FLT_MAX is False exactly for nan and +-inf


@triton.jit
def vsd_kernel(
    x_ptr,  # generated samples x, (B, N) contiguous, any float dtype
    real_cond_ptr,  # teacher x0 prediction with the condition, (B, N)
    real_uncond_ptr,  # teacher x0 prediction without it, (B, N)
    fake_cond_ptr,  # fake (LoRA) score x0 prediction with the condition, (B, N)
    fake_uncond_ptr,  # fake score x0 prediction without it, (B, N)
    weight_ptr,  # float32 (B,), w(t) per sample
    grad_ptr,  # out: d loss / dx, (B, N) in x's dtype
    loss_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of diff^2 over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample (grid axis 0)
    s_real,  # teacher guidance scale
    s_fake,  # fake-score guidance scale
    inv_numel,  # 1 / (B * N): the mean reduction
    BLOCK: tl.constexpr,
):
    i, b = tl.program_id(0), tl.program_id(1)
    idx, mask = row_block(i, b, N, BLOCK)
    x = load_f32(x_ptr, idx, mask)
    rc = load_f32(real_cond_ptr, idx, mask)
    ru = load_f32(real_uncond_ptr, idx, mask)
    fc = load_f32(fake_cond_ptr, idx, mask)
    fu = load_f32(fake_uncond_ptr, idx, mask)
    w = tl.load(weight_ptr + b)
    g = w * ((fu + s_fake * (fc - fu)) - (ru + s_real * (rc - ru)))
    g = tl.where(tl.abs(g) <= FLT_MAX, g, 0.0)  # nan_to_num(nan=0, posinf=0, neginf=0)
    diff = x - (x - g)
    tl.store(grad_ptr + idx, (diff * inv_numel).to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(loss_partial_ptr + b * NUM_BLOCKS + i, tl.sum(diff * diff, axis=0))


def vsd_forward(
    x: torch.Tensor,
    real_cond: torch.Tensor,
    real_uncond: torch.Tensor,
    fake_cond: torch.Tensor,
    fake_uncond: torch.Tensor,
    s_real: float,
    s_fake: float,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, d loss / dx) for contiguous (B, N) inputs and a float32 (B,) weight: one launch."""
    check_launchable(x, vsd_kernel)
    batch, n = x.shape
    block = block_size(n)
    grid = row_grid(batch, n, block)
    loss_partial = torch.empty(batch, grid[0], dtype=torch.float32, device=x.device)
    grad = torch.empty_like(x)
    inv_numel = 1.0 / x.numel()
    vsd_kernel[grid](x, real_cond, real_uncond, fake_cond, fake_uncond, weight, grad, loss_partial, n, grid[0],
                     float(s_real), float(s_fake), inv_numel, BLOCK=block)
    return loss_partial.sum() * (0.5 * inv_numel), grad
