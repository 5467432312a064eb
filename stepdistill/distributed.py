"""Accelerator construction shared by the recipes."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def make_accelerator(**kwargs) -> Accelerator:
    """accelerate's `Accelerator`, switched to CPU multi-process (gloo) when launched as several
    processes on a machine without GPUs. Without this, `accelerate launch --multi_gpu
    --num_processes 2` on a CPU machine silently starts two independent single-process runs.
    Set STEPDISTILL_KEEP_THREADS to keep the caller's torch thread count."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.cuda.is_available():
        kwargs.setdefault("cpu", True)
    # Recipes draw the *global* batch and slice it per process, so a learning-rate schedule counts
    # optimiser steps; accelerate's default would step it num_processes times per step.
    kwargs.setdefault("step_scheduler_with_optimizer", False)
    accelerator = Accelerator(**kwargs)
    if accelerator.device.type == "cpu" and "STEPDISTILL_KEEP_THREADS" not in os.environ:
        # `accelerate launch` pins OMP_NUM_THREADS=1; on a CPU give each process its share of the
        # cores instead (1.5x faster DMD2 steps on 2 cores than one thread).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    return accelerator
