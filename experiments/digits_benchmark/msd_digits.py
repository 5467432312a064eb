"""Multi-student distillation on the digits benchmark, every row measured in one invocation at equal training
compute: the teacher (its committed rows), one DMD2 student, four same-size MSD students and four smaller ones
(`recipes/configs/msd/digits_small.yaml`), each trained for the same steps on the same global batch (the K
students split it), with no time limit so that no run is cut short by its speed on this machine.

    python experiments/digits_benchmark/msd_digits.py     # -> eval/results/msd_digits.json and msd_digits.png (~40 min)
    python experiments/digits_benchmark/msd_digits.py --steps 3200 \
        --out experiments/tuning/results/msd/msd_digits_2x.json   # 2x the budget
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
RUNS = {  # name -> (recipe, overrides)
    "dmd2 (one student)": ("dmd2", []),
    "msd, 4 same-size students": ("msd", []),
    "msd, 4 smaller students (x0.75 channels)": ("msd", ["--config", "recipes/configs/msd/digits_small.yaml"]),
}


def train(recipe: str, overrides: list[str], out: Path, steps: int) -> dict:
    """One run through `accelerate launch` (as a user runs it); its digits results JSON."""
    results = out / "results.json"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / f"{recipe}.py"), *overrides,
           f"train.output_dir={out}", f"train.max_steps={steps}", "train.time_limit_minutes=null",
           "train.overwrite=true", f"eval.results={results}"]
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    data = json.loads(results.read_text())
    data["wall_minutes"] = (time.time() - start) / 60
    return data


def parameters(folder: Path) -> int:
    """Parameters of an exported student's network (the sum over a routed export's students' / their count)."""
    from safetensors.torch import load_file

    files = sorted(folder.rglob("unet/diffusion_pytorch_model.safetensors"))
    per = [sum(t.numel() for t in load_file(str(f)).values()) for f in files]
    return int(sum(per) / len(per))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1600, help="training steps of every run (the default budget)")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "msd_digits_eval")
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "msd_digits.json")
    args = parser.parse_args(argv)
    rows, teacher = [], None
    for name, (recipe, overrides) in RUNS.items():
        out = args.work / name.split(",")[0].split(" ")[0] / str(len(rows))
        data = train(recipe, overrides, out, args.steps)
        student = next(r for r in data["rows"] if r["model"] != "teacher")
        teacher = teacher or [r for r in data["rows"] if r["model"] == "teacher"]
        rows.append({"run": name, "recipe": recipe, "overrides": overrides, "nfe": student["nfe"],
                     "fd": student["fd"], "fd_std": student["fd_std"], "accuracy": student["accuracy"],
                     "seconds_per_image": student["seconds_per_image"], "parameters_per_student": parameters(out / "pipeline"),
                     "train_steps": data["train_steps"], "train_minutes": data["train_minutes"],
                     "wall_minutes": round(data["wall_minutes"], 2)})
    single = rows[0]
    for r in rows[1:]:
        r["fd_vs_single"] = r["fd"] / single["fd"]
        r["speedup_vs_single"] = single["seconds_per_image"] / r["seconds_per_image"]
        r["parameters_vs_teacher"] = r["parameters_per_student"] / single["parameters_per_student"]
    result = {"benchmark": "digits", "command": "python experiments/digits_benchmark/msd_digits.py" + ("" if args.steps == 1600 else
                                                                                f" --steps {args.steps}"),
              "steps": args.steps, "rows": rows, "teacher_rows": teacher}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out.with_suffix(".png"))
    print(json.dumps(rows, indent=2))
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["run"].replace(" (x0.75 channels)", "\n(x0.75 channels)").replace(", ", "\n") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.bar(names, [r["fd"] for r in rows], yerr=[r["fd_std"] for r in rows], color=["#888", "#3b7", "#37b"])
    best = min(r["fd"] for r in result["teacher_rows"])
    a.axhline(best, color="k", ls="--", lw=1, label=f"teacher, best row ({best:.3f})")
    a.set_ylabel("FD (lower is better), 1 step")
    a.legend(fontsize=8)
    b.bar(names, [1e3 * r["seconds_per_image"] for r in rows], color=["#888", "#3b7", "#37b"])
    b.set_ylabel("ms per image")
    for ax in (a, b):
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Multi-student distillation on digits, {result['steps']} steps each")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
