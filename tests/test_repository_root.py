"""Python started at the repository root, as a user's shell, notebook or `python -m pytest` is: the root is first
on sys.path, and nothing there may shadow an installed package. transformers requires the hub package `kernels`
(diffusers imports it while loading models); the project's `kernels/` folder has no __init__.py, so the installed
regular package wins, and the fused kernels import as `stepdistill_kernels`."""

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _at_root(code: str, *, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -c code` in the repository root, the root on PYTHONPATH as well (as tests/test_fsdp.py sets it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_kernels_folder_is_not_a_package():
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert (ROOT / "kernels" / "stepdistill_kernels" / "__init__.py").is_file()
    assert {p.name for p in (ROOT / "kernels").iterdir() if p.suffix == ".py"} == set()


def test_import_kernels_at_the_root_gives_the_hub_package_and_ours_stays_importable():
    hub = importlib.metadata.distribution("kernels")  # installed with transformers
    out = _at_root("import kernels, stepdistill_kernels, sys; print(sys.path[0] == ''); "
                   "print(kernels.__file__); print(stepdistill_kernels.__file__); print(hasattr(kernels, 'CUDAProperties'))")
    first, hub_file, ours, api = out.stdout.split()
    assert first == "True"  # the root really was first on the path
    assert Path(hub_file).resolve().is_relative_to(Path(hub.locate_file("")).resolve())
    assert not Path(hub_file).resolve().is_relative_to(ROOT / "kernels")  # not the project's folder
    assert Path(ours).resolve() == ROOT / "kernels" / "stepdistill_kernels" / "__init__.py"
    assert api == "True", "the hub package's API (what transformers imports from it) is reachable"


def test_the_readme_quick_tour_runs_at_the_root():
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A quick tour", 1)[1]
    code = re.search(r"```python\n(.*?)```", tour, flags=re.S).group(1)
    _at_root(code + "\nassert images.shape == (10, 1, 16, 16) and images.isfinite().all()\n"
             "from diffusers import UNet2DConditionModel  # the model loader that imports transformers' kernels\n")


@pytest.mark.slow
def test_the_kernel_tests_collect_at_the_root():
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/kernels", "--collect-only", "-q", "-p",
                           "no:cacheprovider"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert "tests collected" in last and "error" not in last, last
