"""Every recipe's committed digits result in one table of FD against NFE and against milliseconds per image,
with the teacher's samplers beside them, and the plot of both (`eval/results/recipes_digits.{md,png}`).

    python experiments/digits_benchmark/recipes_table.py

Reads `eval/results/teacher_digits.json` and each `eval/results/<recipe>_digits.json` the recipes write with
`eval.results=...`; nothing is measured here. Milliseconds per image are each run's own timing (batches of
1,000 on the machine that trained it), so they compare within a run more reliably than across runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "eval" / "results"
# (file, label) in table order; a missing file is skipped
RECIPES = [("dmd2_digits.json", "DMD2"), ("sid_digits.json", "SiD"), ("sim_digits.json", "SIM"),
           ("swiftbrush_digits.json", "SwiftBrush"), ("consistency_digits.json", "consistency distillation (LCM)"),
           ("mlcm_digits.json", "MLCM (segments 4 -> 2)"), ("ect_digits.json", "ECT (from the teacher)"),
           ("ict_digits.json", "iCT (from scratch)")]
TEACHER_SAMPLERS = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "heun": "Heun"}


def rows() -> list[dict]:
    out = []
    teacher = json.loads((RESULTS / "teacher_digits.json").read_text())
    for r in teacher["rows"]:
        if r["sampler"] in ("ddim", "dpmpp_2m") and r["nfe"] in (1, 2, 4, 8, 35):
            out.append(dict(model=f"teacher, {TEACHER_SAMPLERS[r['sampler']]}", nfe=r["nfe"], fd=r["fd"],
                            fd_std=r["fd_std"], ms=1e3 * r["seconds_per_image"], steps=None))
    for file, label in RECIPES:
        path = RESULTS / file
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        for r in result["rows"]:
            if r["model"] == "teacher":
                continue
            out.append(dict(model=label, nfe=r["nfe"], fd=r["fd"], fd_std=r["fd_std"],
                            ms=1e3 * r["seconds_per_image"], steps=result.get("train_steps"),
                            minutes=result.get("train_minutes")))
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| model | NFE | FD (mean ± std) | ms / image | training steps (minutes) |", "|---|---|---|---|---|"]
    for r in table:
        trained = "" if r["steps"] is None else f"{r['steps']:,} ({r['minutes']:.1f})"
        lines.append(f"| {r['model']} | {r['nfe']} | {r['fd']:.3f} ± {r['fd_std']:.3f} | {r['ms']:.2f} | {trained} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    models = list(dict.fromkeys(r["model"] for r in table))
    for model in models:
        pts = sorted((r for r in table if r["model"] == model), key=lambda r: r["nfe"])
        style = "--" if model.startswith("teacher") else "-"
        for ax, key in zip(axes, ("nfe", "ms")):
            ax.errorbar([r[key] for r in pts], [r["fd"] for r in pts], yerr=[r["fd_std"] for r in pts],
                        fmt=style + "o", ms=4, capsize=2, label=model)
    for ax, label in zip(axes, ("network evaluations (NFE)", "milliseconds per image (each run's timing)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("FD (digits benchmark)")
        ax.axhline(0.222, color="grey", lw=0.8, ls=":")  # the real-vs-real floor
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=7, loc="upper right")
    fig.suptitle("digits: every recipe against the teacher's samplers (dotted: the real-data floor)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    table = rows()
    md = ("# Every recipe on the digits benchmark\n\nFrom the committed results "
          "(`python experiments/digits_benchmark/recipes_table.py`); FD over 3 seeds x 1,000 class-balanced images, "
          "the real-vs-real floor is 0.222.\n\n" + markdown(table))
    (RESULTS / "recipes_digits.md").write_text(md)
    plot(table, RESULTS / "recipes_digits.png")
    print(md)


if __name__ == "__main__":
    main()
