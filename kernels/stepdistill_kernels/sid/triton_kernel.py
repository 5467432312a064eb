"""SiD loss: one reading pass and a one-program epilogue in forward, one read + write pass in backward.

Layout: (B, N) row-major views (`common.rows`); program pid = b * NUM_BLOCKS + i owns elements
[i*BLOCK, (i+1)*BLOCK) of sample b (`launch.sample_block`). With d = y_real - y_fake, e = y_real - x and
omega_b a per-sample scalar, the loss of sample b is sum_n d (e - alpha d) / omega_b, so one pass can
gather both row sums before omega is known:
  forward   abs_partial[b, i]  = sum_{block} |x - y_real|                   (sid_forward_kernel)
            loss_partial[b, i] = sum_{block} d (e - alpha d)
            omega_b = max(sum_i abs_partial / N, 1e-5)                      (sid_epilogue_kernel, one program)
            loss    = sum_b (sum_i loss_partial) / omega_b / (B N)
  backward  s = grad_output / (omega_b B N)                                 (sid_backward_kernel)
            grad_x = -d s,  grad_real = (e + (1 - 2 alpha) d) s,  grad_fake = (2 alpha d - e) s
The three gradients span two fields (d and e), so storing them would keep at least two input-sized
tensors; recomputing from the saved inputs keeps none and costs one extra read of the three inputs.
All arithmetic is float32 whatever the input dtypes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..launch import (COLS, ROWS, block_size, check_launchable, grad_output_f32, load_f32, row_sums, sample_block,
                      sample_grid)
from .reference import OMEGA_MIN


@triton.jit
def sid_forward_kernel(
    x_ptr,  # generated samples x, (B, N) rows, any float dtype
    y_real_ptr,  # teacher x0 prediction, (B, N) rows
    y_fake_ptr,  # fake-score x0 prediction, (B, N) rows
    abs_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of |x - y_real| over each block
    loss_partial_ptr,  # out: float32 (B, NUM_BLOCKS), sum of d * (e - alpha d) over each block
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    alpha,  # SiD's alpha
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    _, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
    x = load_f32(x_ptr, idx, mask)
    r = load_f32(y_real_ptr, idx, mask)
    f = load_f32(y_fake_ptr, idx, mask)
    d = r - f
    e = r - x
    tl.store(abs_partial_ptr + pid, tl.sum(tl.abs(e), axis=0))
    tl.store(loss_partial_ptr + pid, tl.sum(d * (e - alpha * d), axis=0))


@triton.jit
def sid_epilogue_kernel(
    abs_partial_ptr,  # float32 (B, NUM_BLOCKS) from sid_forward_kernel
    loss_partial_ptr,  # float32 (B, NUM_BLOCKS) from sid_forward_kernel
    omega_ptr,  # out: float32 (B,), the clipped per-sample normaliser
    loss_ptr,  # out: float32 scalar, the loss
    B,  # samples
    NUM_BLOCKS,  # partials per sample
    inv_n,  # 1 / N: torch.mean multiplies by it too
    inv_numel,  # 1 / (B * N)
    omega_min,  # the official clip, 1e-5
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
):
    acc = tl.zeros([ROWS], dtype=tl.float32)
    for r0 in range(0, B, ROWS):
        r = r0 + tl.arange(0, ROWS)
        m = r < B
        omega = tl.maximum(row_sums(abs_partial_ptr, r, m, NUM_BLOCKS, ROWS, COLS) * inv_n, omega_min)
        tl.store(omega_ptr + r, omega, mask=m)
        acc += tl.where(m, tl.div_rn(row_sums(loss_partial_ptr, r, m, NUM_BLOCKS, ROWS, COLS), omega), 0.0)
    tl.store(loss_ptr, tl.sum(acc, axis=0) * inv_numel)


@triton.jit
def sid_backward_kernel(
    x_ptr,  # generated samples x, (B, N) rows
    y_real_ptr,  # teacher x0 prediction, (B, N) rows
    y_fake_ptr,  # fake-score x0 prediction, (B, N) rows
    omega_ptr,  # float32 (B,), the clipped per-sample normaliser from the forward pass
    grad_output_ptr,  # float32 (1,), d out / d loss (read here: no host sync)
    grad_x_ptr,  # out: d out / dx in x's dtype (unused unless WRITE_X)
    grad_real_ptr,  # out: d out / dy_real in y_real's dtype (unused unless WRITE_REAL)
    grad_fake_ptr,  # out: d out / dy_fake in y_fake's dtype (unused unless WRITE_FAKE)
    N,  # elements per sample
    NUM_BLOCKS,  # programs per sample
    alpha,  # SiD's alpha
    inv_numel,  # 1 / (B * N): the mean reduction
    BLOCK: tl.constexpr,
    WRITE_X: tl.constexpr,  # skip the writes autograd does not need
    WRITE_REAL: tl.constexpr,
    WRITE_FAKE: tl.constexpr,
):
    pid = tl.program_id(0)
    b, idx, mask = sample_block(pid, N, NUM_BLOCKS, BLOCK)
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
    """(loss, omega (B,) float32) for (B, N) rows: two launches, no host sync."""
    check_launchable(x, sid_forward_kernel)
    batch, n = x.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    abs_partial = torch.empty(batch, blocks, dtype=torch.float32, device=x.device)
    loss_partial = torch.empty_like(abs_partial)
    omega = torch.empty(batch, dtype=torch.float32, device=x.device)
    loss = torch.empty((), dtype=torch.float32, device=x.device)
    sid_forward_kernel[(programs,)](x, y_real, y_fake, abs_partial, loss_partial, n, blocks, float(alpha), BLOCK=block)
    sid_epilogue_kernel[(1,)](abs_partial, loss_partial, omega, loss, batch, blocks, 1.0 / n, 1.0 / x.numel(),
                              OMEGA_MIN, ROWS=ROWS, COLS=COLS)
    return loss, omega


def sid_backward(
    x: torch.Tensor,
    y_real: torch.Tensor,
    y_fake: torch.Tensor,
    omega: torch.Tensor,
    alpha: float,
    grad_output: torch.Tensor,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
) -> None:
    """Write the requested gradients (the (B, N) rows in `grads`; None: not needed), scaled by grad_output."""
    batch, n = x.shape
    block = block_size(n)
    programs, blocks = sample_grid(batch, n, block)
    dummies = [g if g is not None else t for g, t in zip(grads, (x, y_real, y_fake))]  # never written
    sid_backward_kernel[(programs,)](
        x, y_real, y_fake, omega, grad_output_f32(grad_output), *dummies, n, blocks, float(alpha), 1.0 / (batch * n),
        BLOCK=block, WRITE_X=grads[0] is not None, WRITE_REAL=grads[1] is not None, WRITE_FAKE=grads[2] is not None)
