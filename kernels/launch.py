"""Launch helpers shared by the Triton kernels: the (block, sample) grid and the device check.

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
def row_block(i, b, N, BLOCK: tl.constexpr):
    """Program (i, b)'s block of sample b's row in a contiguous (B, N) tensor: the flat element indices
    (int64: B * N may exceed 2^31 for video latents) and the mask of those inside the row."""
    offs = i * BLOCK + tl.arange(0, BLOCK)
    return b.to(tl.int64) * N + offs, offs < N


@triton.jit
def load_f32(ptr, idx, mask):
    """A masked block as float32 (0 outside the row), whatever the tensor's dtype."""
    return tl.load(ptr + idx, mask=mask, other=0.0).to(tl.float32)


def block_size(n: int) -> int:
    """Elements per program along a sample's row: a power of two, no larger than the row needs."""
    return min(MAX_BLOCK, triton.next_power_of_2(n))


def row_grid(batch: int, n: int, block: int) -> tuple[int, int]:
    """Grid (blocks per row, B): axis 0 may be huge (2^31 - 1), CUDA caps axis 1 at 65535 samples."""
    return (triton.cdiv(n, block), batch)
