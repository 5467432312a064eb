"""DMD2 on an EDM teacher, its fake score trained at the official noise levels or uniformly in sigma.

The teacher is the shipped digits teacher in EDM's parameterisation (`model.teacher=digits-edm`, an exact
view: `stepdistill.edm_view`). DMD2's distribution-matching loss queries the fake score at indices of the
Karras table, 40% of them below sigma 1; `loss.fake_times=teacher` (the default, the official code's)
trains it on the same table, `loss.fake_times=uniform` uniformly in sigma (1.3% of its draws below 1).
Same steps, seeds and everything else; the digits benchmark scores each student.

    python experiments/dmd2_noise_levels/dmd2_edm_noise_levels.py              # ~25 CPU minutes -> results/ here
    python experiments/dmd2_noise_levels/dmd2_edm_noise_levels.py --steps 20   # a smoke run (results under outputs/)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))
import dmd2  # noqa: E402

from stepdistill.config import apply_overrides  # noqa: E402
from stepdistill.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dmd2_edm_noise_levels.json"
ARMS = {"official levels (teacher)": "teacher", "uniform in sigma": "uniform"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="training steps of each run (default 1200)")
    parser.add_argument("--out", default="outputs/dmd2_edm_noise_levels", help="the runs' folder")
    args = parser.parse_args(argv)
    results = Path(args.out) / "results.json" if args.steps != 1200 else RESULTS
    rows = []
    for label, choice in ARMS.items():
        folder = Path(args.out) / choice
        cfg = apply_overrides(dmd2.DMD2Config(), [
            "model.teacher=digits-edm", "model.generator_timesteps=[80.0]", f"loss.fake_times={choice}",
            f"train.max_steps={args.steps}", "train.time_limit_minutes=null", f"train.output_dir={folder}",
            "train.overwrite=true", "eval.teacher_rows=none", "export.enabled=false"])
        result = dmd2.main(cfg)
        row = result["rows"][0]
        rows.append(dict(arm=label, fake_times=choice, fd=row["fd"], fd_std=row["fd_std"],
                         fd_per_seed=row["fd_per_seed"], precision=row["precision"], recall=row["recall"],
                         accuracy=row["accuracy"], train_steps=result["train_steps"],
                         train_minutes=result["train_minutes"]))
        print(rows[-1], flush=True)
    teacher = json.loads((ROOT / "eval" / "results" / "teacher_digits.json").read_text())
    default = next(r for r in teacher["rows"] if r.get("default"))
    out = dict(command="python experiments/dmd2_noise_levels/dmd2_edm_noise_levels.py"
               + (f" --steps {args.steps}" if args.steps != 1200 else ""),
               teacher="digits-edm (the shipped digits teacher, EDM view)", steps=args.steps,
               teacher_default_fd=default["fd"], rows=rows)
    atomic_write_text(results, json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
