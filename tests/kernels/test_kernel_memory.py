"""What each autograd graph keeps between forward and backward, fused vs eager reference
(`torch.autograd.graph.saved_tensors_hooks`; `stepdistill_kernels.testing.saved_bytes`)."""

import importlib

import pytest
import torch

from stepdistill_kernels import KERNELS
from stepdistill_kernels.testing import saved_bytes

SHAPE = (4, 3, 16, 16)
# Input-sized tensors each fused graph keeps, all references to its arguments (the backward recomputes
# from them): DMD x0_real, x0_fake; VSD the four predictions; SiD x, y_real, y_fake; pseudo-Huber pred, target.
SAVED_INPUTS = {"dmd": 2, "vsd": 4, "sid": 3, "pseudo_huber": 2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", KERNELS)
def test_fused_graph_keeps_no_new_input_sized_memory(device, name, dtype):
    bench = importlib.import_module(f"stepdistill_kernels.{name}.bench")
    args = bench.make_args(SHAPE, dtype, device)
    fused, eager = saved_bytes(bench.FUSED, *args), saved_bytes(bench.REFERENCE, *args)
    one_input = args[0].numel() * args[0].element_size()
    small = 64 * SHAPE[0]  # a few float32 per-sample vectors (normalisers, weights, coefficients)
    assert fused.new <= small
    assert fused.saved <= SAVED_INPUTS[name] * one_input + small
    # The eager graph keeps at least one new input-sized tensor (DMD / VSD their float32 target x - g,
    # pseudo-Huber its difference, SiD its intermediates), more in bf16 (float32 copies of the inputs).
    assert eager.new >= one_input * (2 if dtype == torch.bfloat16 else 1)
