"""Launch helpers shared by the Triton kernels: the flat (sample, block) grid, the partial-sum reduction
and the device check.

Grid: one program per (sample b, block i) pair, flattened on grid axis 0 as pid = b * NUM_BLOCKS + i, so
the batch is never capped by CUDA's 65,535 limit on axes 1 and 2 (axis 0 takes 2^31 - 1 programs), and a
program's partial sum lands at `partial_ptr + pid`: the (B, NUM_BLOCKS) buffer in row-major order.

Reductions are deterministic: each program writes one float32 partial, and a later launch adds each row's
partials in a fixed order (`row_sums`); no atomics, so the same inputs give the same bits on every run.

Triton's CPU interpreter (how the tests run the kernels without a GPU) is chosen by TRITON_INTERPRET=1,
which triton reads when `@triton.jit` decorates a function: when a kernel module is imported, and, for
triton.language's own jit helpers such as `tl.sum`, when triton itself is first imported. So the variable
must be in the environment before the process first imports triton (diffusers imports it too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 1024  # elements per program: 4 warps x 32 threads x 8 (fp32: two 16-byte loads per thread)
MAX_GRID = 2**31 - 1  # CUDA's limit on grid axis 0
ROWS = 32  # rows of partials one reduction program handles at a time
COLS = 64  # partials per row it loads at a time


def is_interpreted(kernel: object) -> bool:
    """Whether `kernel` (a @triton.jit function) was decorated in interpreter mode and so runs on CPU tensors."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - very old triton
        return False
    return isinstance(kernel, InterpretedFunction)


def stdlib_interpreted() -> bool:
    """Whether triton.language's own helpers (tl.sum, ...) were built for the interpreter, i.e. whether
    TRITON_INTERPRET=1 was set before triton's first import. Interpreted kernels that reduce need this."""
    return is_interpreted(tl.sum)


def check_launchable(t: torch.Tensor, kernel: object) -> None:
    """Fail early, with the fix, when `kernel` could not run on `t`."""
    if t.is_cuda or (is_interpreted(kernel) and stdlib_interpreted()):
        return
    raise RuntimeError(
        f"the Triton kernels need CUDA tensors (got {t.device}). To run them on CPU through Triton's interpreter, "
        "set TRITON_INTERPRET=1 before triton is first imported (triton reads it when kernels are decorated); "
        "or use the PyTorch reference (stepdistill.ops does so by default off CUDA)"
    )


@triton.jit
def sample_block(pid, N, NUM_BLOCKS, BLOCK: tl.constexpr):
    """Program `pid`'s sample b, and its block of b's row in a (B, N) row-major layout: the flat element
    indices (int64: B * N may exceed 2^31 for video latents) and the mask of those inside the row."""
    b = pid // NUM_BLOCKS
    offs = (pid - b * NUM_BLOCKS) * BLOCK + tl.arange(0, BLOCK)
    return b, b.to(tl.int64) * N + offs, offs < N


@triton.jit
def load_f32(ptr, idx, mask):
    """A masked block as float32 (0 outside the row), whatever the tensor's dtype."""
    return tl.load(ptr + idx, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def row_sums(partial_ptr, rows, row_mask, NUM_BLOCKS, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Each of `rows`' sum of its NUM_BLOCKS float32 partials (a (B, NUM_BLOCKS) row-major buffer), added
    COLS at a time in a fixed order: one read of the partials however long the rows are."""
    acc = tl.zeros([ROWS], dtype=tl.float32)
    base = rows.to(tl.int64) * NUM_BLOCKS
    for c in range(0, NUM_BLOCKS, COLS):
        cols = c + tl.arange(0, COLS)
        mask = row_mask[:, None] & (cols[None, :] < NUM_BLOCKS)
        acc += tl.sum(tl.load(partial_ptr + base[:, None] + cols[None, :], mask=mask, other=0.0), axis=1)
    return acc


@triton.jit
def total_kernel(
    partial_ptr,  # float32 (COUNT,) partial sums
    out_ptr,  # out: float32 scalar, scale * sum(partials)
    COUNT,  # number of partials
    scale,  # float32 factor applied to the total (the loss's constant)
    BLOCK: tl.constexpr,
):
    """One program: the scaled total of all partials, added BLOCK at a time in a fixed order."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for c in range(0, COUNT, BLOCK):
        offs = c + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + offs, mask=offs < COUNT, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0) * scale)


def block_size(n: int) -> int:
    """Elements per program along a sample's row: a power of two, no larger than the row needs."""
    return min(MAX_BLOCK, triton.next_power_of_2(n))


def sample_grid(batch: int, n: int, block: int) -> tuple[int, int]:
    """(programs, blocks per sample): every (sample, block) pair on grid axis 0."""
    blocks = triton.cdiv(n, block)
    programs = batch * blocks
    if programs > MAX_GRID:
        raise ValueError(f"{batch} samples x {blocks} blocks exceed CUDA's {MAX_GRID} programs on grid axis 0")
    return programs, blocks


def total(partial: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * sum(partial) as a float32 scalar tensor, in one launch and without a host sync."""
    out = torch.empty((), dtype=torch.float32, device=partial.device)
    total_kernel[(1,)](partial, out, partial.numel(), float(scale), BLOCK=MAX_BLOCK)
    return out


def grad_output_f32(grad_output: torch.Tensor) -> torch.Tensor:
    """The backward's incoming scalar gradient as a float32 (1,) tensor the kernels read themselves: never
    read on the host, so no sync and nothing that breaks CUDA-graph capture or a torch.compile graph."""
    return grad_output.detach().reshape(1).to(torch.float32)
