"""Accelerator construction shared by the recipes."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def make_accelerator(**kwargs) -> Accelerator:
    """accelerate's `Accelerator`, switched to CPU multi-process (gloo) when launched as several
    processes on a machine without GPUs. Without this, `accelerate launch --multi_gpu
    --num_processes 2` on a CPU machine silently starts two independent single-process runs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.cuda.is_available():
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)
