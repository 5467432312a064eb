"""Wall-clock speed-up of multi-student distillation over processes: the default configuration (4 same-size
students) for a fixed number of steps on 1 process, then on 2 processes owning 2 students each
(`model.parallel=students`) and on 2 data-parallel processes; seconds per training step from each run's log.

    python experiments/msd_scale_out/msd_scale_out.py --steps 100   # -> results/msd_scale_out.json (~3 min, 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(out: Path, processes: int, steps: int, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(processes), *(["--multi_gpu"] if processes > 1 else []),
           str(ROOT / "recipes" / "msd.py"), f"train.output_dir={out}", f"train.max_steps={steps}", "train.overwrite=true",
           "train.time_limit_minutes=null", "eval.enabled=false", "export.enabled=false", "optim.warmup_steps=0",
           f"train.checkpoint_every={steps}", f"train.sample_every={steps}", *extra]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True)
    return {"processes": processes, "overrides": list(extra), "steps": steps,
            "wall_seconds": round(time.time() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "msd_scale_out")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "msd_scale_out.json")
    args = parser.parse_args(argv)
    rows = [run(args.work / "one", 1, args.steps),
            run(args.work / "owned", 2, args.steps, "model.parallel=students"),
            run(args.work / "data", 2, args.steps)]
    for r in rows:
        r["speedup_vs_one_process"] = round(rows[0]["wall_seconds"] / r["wall_seconds"], 2)
    result = {"command": "python experiments/msd_scale_out/msd_scale_out.py"
                         + ("" if args.steps == 300 else f" --steps {args.steps}"),
              "configuration": "recipes/configs/msd/digits.yaml",
              "machine": f"{os.cpu_count()} CPU cores", "rows": rows,
              "note": "wall time includes each launch's start-up (~10 s) and its one checkpoint"}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
