"""Run an exported pipeline folder as a user without stepdistill would: a fresh, isolated Python process in which
importing stepdistill fails, loading the folder with stock diffusers (`trust_remote_code=True`)."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

SEEDED = "generator=torch.Generator().manual_seed(0)"  # the calls' fixed seed

CHILD = r"""
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "stepdistill":
            raise ImportError("stepdistill is hidden in this process")

sys.meta_path.insert(0, Hide())
try:
    import stepdistill
    raise SystemExit("stepdistill is importable")
except ImportError:
    pass

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
images = eval("pipe(" + sys.argv[3] + ", output_type='pt')").images
save_file({"images": images.contiguous()}, sys.argv[2])
"""


def images_without_stepdistill(folder: Path, work: Path, call: str, *, timeout: int = 300) -> torch.Tensor:
    """`pipe(<call>, output_type="pt").images` of the pipeline in `folder`, sampled in a process without
    stepdistill; `call` is the call's Python arguments, e.g. "class_labels=[3, 7], generator=...". """
    out = work / "images.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(work / "mods")}
    child = subprocess.run([sys.executable, "-I", "-c", CHILD, str(folder), str(out), call], cwd=work, env=env,
                           capture_output=True, text=True, timeout=timeout)
    assert child.returncode == 0, child.stderr[-3000:]
    return load_file(str(out))["images"]
