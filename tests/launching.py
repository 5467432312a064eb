"""Launch a recipe as a user does, `accelerate launch --multi_gpu --num_processes N recipes/<name>.py ...`, on
CPU processes (gloo), one thread each; one process runs `python recipes/<name>.py ...`, which is what the
launcher runs for one process. `fsdp`: `--use_fsdp` in place of `--multi_gpu` (the recipe shards its roles itself,
`stepdistill.sharding`)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(recipe: str, processes: int, overrides: list[str], *, timeout: int = 600, fsdp: bool = False) -> str:
    script = [str(ROOT / "recipes" / f"{recipe}.py"), *overrides]
    # One process: the script itself, as `accelerate launch` runs it (one interpreter fewer to start)
    cmd = [sys.executable, *script] if processes == 1 else [
        sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--num_processes", str(processes), "--use_fsdp" if fsdp else "--multi_gpu", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout + run.stderr
