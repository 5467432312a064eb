import pytest
"""Sharded training (FSDP2) on 2 CPU processes over gloo matches one process (tests/fsdp_worker.py says why the
roles are sharded by torch directly: accelerate enables FSDP for GPU processes only)."""

import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "fsdp_worker.py"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_the_trio_sharded_over_two_processes_trains_as_one_process(digits_like_teacher, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run([sys.executable, str(WORKER), str(digits_like_teacher), str(one)], check=True, env=env,
                   capture_output=True, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(WORKER),
                    str(digits_like_teacher), str(two)], check=True, env=env, capture_output=True, timeout=300)
    a, b = load_file(str(one)), load_file(str(two))
    assert set(a) == set(b) and any(k.startswith("fake_score.") for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 5e-5, worst  # float reduction order only; the updates themselves move weights by ~3e-3
    teacher = load_file(str(digits_like_teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    moved = max(float((a[f"generator.{k}"] - v).abs().max()) for k, v in teacher.items())
    assert moved > 1e-3  # the generator trained
