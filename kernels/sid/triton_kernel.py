"""SiD loss: one reading pass in forward, one read + write pass in backward (no gradient stored).

Layout: contiguous (B, N) views; program (i, b) owns elements [i*BLOCK, (i+1)*BLOCK) of sample b.
With d = y_real - y_fake, e = y_real - x and omega_b a per-sample scalar, the loss of sample b is
sum_n d (e - alpha d) / omega_b, so one pass can gather both row sums before omega is known:
  forward   abs_partial[b, i]  = sum_{block} |x - y_real|
            loss_partial[b, i] = sum_{block} d (e - alpha d)
            host: omega_b = max(sum_i abs_partial / N, 1e-5); loss = sum_b (sum_i loss_partial) / omega_b / (B N)
  backward  s = grad_output / (omega_b B N)
            grad_x = -d s,  grad_real = (e + (1 - 2 alpha) d) s,  grad_fake = (2 alpha d - e) s
The three gradients span two fields (d and e), so storing them would keep at least two input-sized
tensors; recomputing from the saved inputs keeps none and costs one extra read of the three inputs.
All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import block_size, check_launchable, load_f32, row_block, row_grid
from .reference import OMEGA_MIN


@triton.jit
def sid_forward_kernel(
    x_ptr,  # generated samples x, (B, N) contiguous, any float dtype
    y_real_ptr,  # teacher x0 prediction, (B, N)
    y_fake_ptr,  # fake-score x0 prediction, (B, N)
    abs_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of |x - y_real| over each block
    loss_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of d * (e - alpha d) over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample (grid axis 0)
    alpha,  # SiD's alpha
    BLOCK: tl.constexpr,
):
    i, b = tl.program_id(0), tl.program_id(1)
    idx, mask = row_block(i, b, N, BLOCK)
    x = load_f32(x_ptr, idx, mask)
    r = load_f32(y_real_ptr, idx, mask)
    f = load_f32(y_fake_ptr, idx, mask)
    d = r - f
    e = r - x
    tl.store(abs_partial_ptr + b * NUM_BLOCKS + i, tl.sum(tl.abs(e), axis=0))
    tl.store(loss_partial_ptr + b * NUM_BLOCKS + i, tl.sum(d * (e - alpha * d), axis=0))


@triton.jit
def sid_backward_kernel(
    x_ptr,  # generated samples x, (B, N) contiguous
    y_real_ptr,  # teacher x0 prediction, (B, N)
    y_fake_ptr,  # fake-score x0 prediction, (B, N)
    omega_ptr,  # float32 (B,), the clipped per-sample normaliser from the forward pass
    grad_output_ptr,  # float32 (1,), d out / d loss (read here: no host sync)
    grad_x_ptr,  # out: d loss / dx in x's dtype (unused unless WRITE_X)
    grad_real_ptr,  # out: d loss / dy_real in y_real's dtype (unused unless WRITE_REAL)
    grad_fake_ptr,  # out: d loss / dy_fake in y_fake's dtype (unused unless WRITE_FAKE)
    N,  # elements per sample
    alpha,  # SiD's alpha
    inv_numel,  # 1 / (B * N): the mean reduction
    BLOCK: tl.constexpr,
    WRITE_X: tl.constexpr,  # skip the writes autograd does not need
    WRITE_REAL: tl.constexpr,
    WRITE_FAKE: tl.constexpr,
):
    i, b = tl.program_id(0), tl.program_id(1)
    idx, mask = row_block(i, b, N, BLOCK)
    x = load_f32(x_ptr, idx, mask)
    r = load_f32(y_real_ptr, idx, mask)
    f = load_f32(y_fake_ptr, idx, mask)
    s = tl.div_rn(tl.load(grad_output_ptr) * inv_numel, tl.load(omega_ptr + b))  # IEEE division, like torch
    d = r - f
    e = r - x
    if WRITE_X:
        tl.store(grad_x_ptr + idx, (-d * s).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if WRITE_REAL:
        gr = (e + (1.0 - 2.0 * alpha) * d) * s
        tl.store(grad_real_ptr + idx, gr.to(grad_real_ptr.dtype.element_ty), mask=mask)
    if WRITE_FAKE:
        gf = (2.0 * alpha * d - e) * s
        tl.store(grad_fake_ptr + idx, gf.to(grad_fake_ptr.dtype.element_ty), mask=mask)


def sid_forward(
    x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, omega (B,) float32) for contiguous (B, N) inputs: one launch plus (B, blocks)-sized sums."""
    check_launchable(x, sid_forward_kernel)
    batch, n = x.shape
    block = block_size(n)
    grid = row_grid(batch, n, block)
    abs_partial = torch.empty(batch, grid[0], dtype=torch.float32, device=x.device)
    loss_partial = torch.empty_like(abs_partial)
    sid_forward_kernel[grid](x, y_real, y_fake, abs_partial, loss_partial, n, grid[0], float(alpha), BLOCK=block)
    omega = (abs_partial.sum(1) / n).clamp_min(OMEGA_MIN)
    return (loss_partial.sum(1) / omega).sum() / x.numel(), omega


def sid_backward(
    x: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    omega: torch.Tensor,
    alpha: float,
    grad_output: torch.Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients for contiguous (B, N) inputs, scaled by grad_output; None where `needs` is False."""
    batch, n = x.shape
    block = block_size(n)
    grads = [torch.empty_like(t) if need else None for t, need in zip((x, y_real, y_fake), needs)]
    dummies = [g if g is not None else t for g, t in zip(grads, (x, y_real, y_fake))]  # never written
    go = grad_output.detach().reshape(1).to(torch.float32)
    sid_backward_kernel[row_grid(batch, n, block)](
        x, y_real, y_fake, omega, go, *dummies, n, float(alpha), 1.0 / x.numel(),
        BLOCK=block, WRITE_X=needs[0], WRITE_REAL=needs[1], WRITE_FAKE=needs[2])
    return grads[0], grads[1], grads[2]
