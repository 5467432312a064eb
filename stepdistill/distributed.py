"""Accelerator construction shared by the recipes."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def native_bf16(device_type: str) -> bool:
    """Whether this machine runs bfloat16 matmuls and convolutions in hardware: a CUDA GPU that
    supports it, or a CPU with AMX or AVX512-BF16 (oneDNN otherwise emulates bf16, slower than fp32)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        cpu = torch.cpu
        return any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    return False


def launcher_mixed_precision() -> str | None:
    """What `accelerate launch --mixed_precision` (or its config file) chose, if it chose anything."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower()
    return value or None


def resolve_mixed_precision(mixed_precision: str, device_type: str) -> str:
    """accelerate's `mixed_precision` for a config's choice: "auto" is the launcher's `--mixed_precision` if it gave
    one, else "bf16" where `native_bf16`, else "no". An explicit choice wins over the launcher's, and says so."""
    launcher = launcher_mixed_precision()
    if mixed_precision != "auto":
        if launcher is not None and launcher != mixed_precision and os.environ.get("RANK", "0") == "0":
            print(f"note: train.mixed_precision={mixed_precision} overrides the launcher's --mixed_precision "
                  f"{launcher} (train.mixed_precision=auto follows the launcher)", flush=True)
        return mixed_precision
    if launcher is not None:
        return launcher
    return "bf16" if native_bf16(device_type) else "no"


COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype frozen networks are held in under accelerate's resolved `mixed_precision` (float32 for "no")."""
    return COMPUTE_DTYPES.get(mixed_precision, torch.float32)


def enable_tf32(device: torch.device) -> bool:
    """TF32 matmuls and convolutions on a CUDA GPU that has them (Ampere and later): float32 passes (the trained
    roles' master weights outside autocast, fp32 runs) at tensor-core speed. Returns whether it is on."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        return False
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    return True


def make_accelerator(**kwargs) -> Accelerator:
    """accelerate's `Accelerator`, switched to CPU multi-process (gloo) when launched as several
    processes on a machine without GPUs. Without this, `accelerate launch --multi_gpu
    --num_processes 2` on a CPU machine silently starts two independent single-process runs.
    Set STEPDISTILL_KEEP_THREADS to keep the caller's torch thread count."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.cuda.is_available():
        kwargs.setdefault("cpu", True)
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and os.environ.get("RANK", "0") == "0":
            # accelerate's state switches only GPU-family process groups to FSDP: the recipe shards its roles itself
            print("note: accelerate shards (FSDP) GPU processes only; on these CPU processes the recipe shards its "
                  "trained roles with torch's FSDP2 (stepdistill.sharding)", flush=True)
    if "mixed_precision" in kwargs:
        device_type = "cpu" if kwargs.get("cpu") or not torch.cuda.is_available() else "cuda"
        kwargs["mixed_precision"] = resolve_mixed_precision(kwargs["mixed_precision"], device_type)
    # Recipes draw the *global* batch and slice it per process, so a learning-rate schedule counts
    # optimiser steps; accelerate's default would step it num_processes times per step.
    kwargs.setdefault("step_scheduler_with_optimizer", False)
    # accelerate cannot build its FSDP plugin for CPU processes: it is left out (the recipe shards, `sharding`)
    fsdp = os.environ.pop("ACCELERATE_USE_FSDP", None) if kwargs.get("cpu") else None
    try:
        accelerator = Accelerator(**kwargs)
    finally:
        if fsdp is not None:
            os.environ["ACCELERATE_USE_FSDP"] = fsdp
    if accelerator.device.type == "cpu" and "STEPDISTILL_KEEP_THREADS" not in os.environ:
        # `accelerate launch` pins OMP_NUM_THREADS=1; on a CPU give each process its share of the
        # cores instead (1.5x faster DMD2 steps on 2 cores than one thread).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // accelerator.num_processes))
    return accelerator


class LocalAccelerator:
    """One process's own view of a multi-process `Accelerator`, for work no other process shares (a student
    owned by this process, multi-student distillation): one process of the global batch, models prepared
    without the data-parallel wrapper, `reduce` the identity. Everything else (backward with mixed precision,
    clipping, optimiser and scheduler wrappers, checkpoint registration) is the accelerator's own."""

    num_processes, process_index, local_process_index = 1, 0, 0
    is_main_process = is_local_main_process = True

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    def __getattr__(self, name):
        return getattr(self.accelerator, name)

    def prepare(self, *objects):
        prepared = [self.accelerator.prepare_model(o, evaluation_mode=True) if isinstance(o, torch.nn.Module)
                    else self.accelerator.prepare(o) for o in objects]
        return prepared[0] if len(prepared) == 1 else tuple(prepared)

    def reduce(self, tensor, reduction: str = "sum"):
        return tensor

    def wait_for_everyone(self) -> None:
        pass
