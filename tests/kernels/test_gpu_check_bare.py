"""`eval/gpu_check.sh` on a machine like the lent GPU one: torch, triton and pytest, but neither diffusers nor
an installed stepdistill. Rehearsed here in a child process whose Python skips site-packages processing
(`-S`: no .pth files, so the editable install is invisible) and finds a `diffusers` that is not there; the
script must import the kernels from this folder and collect its tests, then stop at the CUDA check."""

import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bare_python(tmp_path):
    """(python, environment) of a bare machine: site-packages on the path as plain folders, diffusers absent."""
    hidden = tmp_path / "hide" / "diffusers"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'diffusers\'", name="diffusers")\n')
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(python),
           "PYTHONPATH": ":".join([str(tmp_path / "hide"), *site.getsitepackages()])}
    return python, env


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs for real")
def test_gpu_check_runs_without_diffusers_or_an_install_up_to_the_cuda_check(bare_python):
    python, env = bare_python
    for probe in ("import diffusers", "import stepdistill_kernels"):  # the bare machine really is bare
        proc = subprocess.run([str(python), "-c", probe], env=env, capture_output=True, text=True, check=False)
        assert "ModuleNotFoundError" in proc.stderr, probe
    proc = subprocess.run(["bash", str(ROOT / "eval" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA device visible" in proc.stderr
    source = proc.stdout.split("stepdistill_kernels from ", 1)[1].split()[0]
    assert Path(source).resolve() == ROOT / "kernels" / "stepdistill_kernels"
    collected = proc.stdout.strip().splitlines()[-1]
    assert "tests collected" in collected and "error" not in collected, collected
