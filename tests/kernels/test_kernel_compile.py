"""The interpreter accepts code the Triton compiler rejects, so every kernel is also compiled ahead of time
for an H100/H200 (sm_90: Triton IR -> PTX -> cubin with the bundled ptxas). No GPU is needed; it runs in a
fresh process because this session's triton is in interpreter mode. Run directly to see the PTX checks:
`python tests/kernels/test_kernel_compile.py`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

# kernel -> constexpr values; the other arguments are typed by the kernels' naming convention (`_signature`).
CASES = {
    "dmd.triton_kernel.dmd_norm_partial_kernel": {"BLOCK": 1024},
    "dmd.triton_kernel.dmd_norm_kernel": {"ROWS": 32, "COLS": 64},
    "dmd.triton_kernel.dmd_loss_partial_kernel": {"BLOCK": 1024},
    "dmd.triton_kernel.dmd_backward_kernel": {"BLOCK": 1024},
    "vsd.triton_kernel.vsd_loss_partial_kernel": {"BLOCK": 1024},
    "vsd.triton_kernel.vsd_backward_kernel": {"BLOCK": 1024},
    "sid.triton_kernel.sid_forward_kernel": {"BLOCK": 1024},
    "sid.triton_kernel.sid_epilogue_kernel": {"ROWS": 32, "COLS": 64},
    "sid.triton_kernel.sid_backward_kernel": {"BLOCK": 1024, "WRITE_X": True, "WRITE_REAL": True, "WRITE_FAKE": False},
    "pseudo_huber.triton_kernel.sq_norm_kernel": {"BLOCK": 1024},
    "pseudo_huber.triton_kernel.pseudo_huber_epilogue_kernel": {"ROWS": 32, "COLS": 64},
    "pseudo_huber.triton_kernel.pseudo_huber_backward_kernel": {
        "BLOCK": 1024, "WRITE_PRED": True, "WRITE_TARGET": True, "WRITE_WEIGHT": True},
    "launch.total_kernel": {"BLOCK": 1024},
}
FLOAT32_BUFFERS = ("partial", "weight", "omega", "coef", "grad_output", "norm", "per_ptr", "loss_ptr", "out_ptr")  # always float32, whatever the inputs


def _signature(arg_names: list[str], dtype: str, constexprs: dict[str, object]) -> dict[str, str]:
    """`*_ptr` are tensors (inputs/gradients in `dtype`, reduction buffers and per-sample vectors in
    float32), upper-case scalars are int32 sizes, lower-case scalars float32."""
    def kind(name: str) -> str:
        if name in constexprs:
            return "constexpr"
        if name.endswith("_ptr"):
            return "*fp32" if any(b in name for b in FLOAT32_BUFFERS) else f"*{dtype}"
        return "i32" if name.isupper() else "fp32"

    return {name: kind(name) for name in arg_names}


def compile_all() -> list[str]:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    lines = []
    for path, constexprs in CASES.items():
        module, name = path.rsplit(".", 1)
        kernel = getattr(importlib.import_module(f"stepdistill_kernels.{module}"), name)
        for dtype in ("fp32", "bf16", "fp16"):
            src = ASTSource(fn=kernel, signature=_signature(kernel.arg_names, dtype, constexprs),
                            constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()})
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            assert compiled.asm.get("cubin"), f"{path} [{dtype}]: no cubin"
            lines.append(f"{path} [{dtype}]: {len(compiled.asm['ptx'])} chars of PTX")
    return lines


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the other tests run the kernels compiled")
def test_every_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # keep the compiled artefacts out of ~/.triton
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("chars of PTX") == 3 * len(CASES)


if __name__ == "__main__":
    print("\n".join(compile_all()))
