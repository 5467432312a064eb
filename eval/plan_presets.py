"""The memory plan (`--plan`) of every real-model preset at 1 and 8 GPUs, data-parallel and FSDP: the table in
docs/memory.md. Offline, from the shipped model configs on the meta device (nothing is loaded; under a CPU minute).

    python eval/plan_presets.py            # writes eval/results/plan_presets.json, prints the markdown table

A real-model preset is one whose teacher is a hub id or a folder path (its `model.teacher` contains "/"); each is
planned as `accelerate launch recipes/<recipe>.py --config <preset> --plan` plans it (`stepdistill.training.plan`).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "recipes")]

import torch  # noqa: E402
import yaml  # noqa: E402

from registry import RECIPES  # noqa: E402
from stepdistill.config import load_config  # noqa: E402
from stepdistill.training.plan import plan  # noqa: E402

OUT = ROOT / "eval" / "results" / "plan_presets.json"
GPUS = (1, 8)


def real_presets() -> list[tuple[str, Path]]:
    """(recipe, preset) of every preset whose teacher is a hub id or a folder path."""
    found = []
    for name, info in RECIPES.items():
        for path in info.presets():
            teacher = str((yaml.safe_load(path.read_text()) or {}).get("model", {}).get("teacher", ""))
            if "/" in teacher:
                found.append((name, path))
    return found


def plan_preset(name: str, path: Path) -> dict:
    info = RECIPES[name]
    cfg = load_config(info.config_class(), ["--config", str(path)])
    report = plan(info.module(), cfg, GPUS)
    report["preset"] = str(path.relative_to(ROOT))
    return report


def _name(r: dict) -> str:
    return f"`{Path(r['preset']).parent.name}/{Path(r['preset']).stem}`"


def markdown(reports: list[dict]) -> str:
    """Two tables: the per-GPU totals `--plan` prints (each process on batch / GPUs), and their parts, so that a
    total at any micro-batch b is the weights' part plus b times the activations per sample."""
    totals = ["| preset | configs | precision, size | batch | micro 1 / 8 GPUs | 1 GPU DDP | 1 GPU FSDP | 8 GPUs DDP "
              "| 8 GPUs FSDP |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    parts = ["| preset | weights, grads, optimiser, EMA: 1 GPU | 8 GPUs DDP | 8 GPUs FSDP | activations GiB / sample "
             "(peak update) |", "|---|---:|---:|---:|---:|"]
    for r in reports:
        by = {g["gpus"]: g for g in r["gpus"]}
        size = f"{r['resolution']}px" if r["resolution"] else "x".join(map(str, r["sample_shape"]))
        cells = [f"{by[n][mode]['total']:,.1f}" for n in GPUS for mode in ("ddp", "fsdp")]
        totals.append(f"| {_name(r)} | `{Path(r['model']).name}` | {r['precision']}, {size} | {r['batch_size']} | "
                      f"{by[1]['micro_batch']:g} / {by[8]['micro_batch']:g} | " + " | ".join(cells) + " |")
        weights = [by[n][mode]["total"] - by[n][mode]["activations"]
                   for n, mode in ((1, "ddp"), (8, "ddp"), (8, "fsdp"))]
        peak = by[1]["peak_update"]
        parts.append(f"| {_name(r)} | " + " | ".join(f"{w:,.1f}" for w in weights) +
                     f" | {r['activations'][peak]['per_sample_gib']:.3f} ({peak}) |")
    return "\n".join(totals) + "\n\n" + "\n".join(parts)


def roles_table(reports: list[dict]) -> str:
    rows = ["| preset | roles (trainable parameters; EMA; backpropagates) |\n|---|---|"]
    for r in reports:
        parts = []
        for role in r["roles"]:
            flags = ", ".join(f for f, on in (("EMA", role["ema"]), ("backprop", role["backprop"])) if on)
            parts.append(f"{role['role']}: {role['what']} ({role['trainable'] / 1e6:,.1f} M trainable"
                         f"{'; ' + flags if flags else ''})")
        rows.append(f"| {_name(r)} | " + "<br>".join(parts) + " |")
    return "\n".join(rows)


def main() -> None:
    start = time.time()
    reports = [plan_preset(name, path) for name, path in real_presets()]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"command": "python eval/plan_presets.py", "gpus": list(GPUS),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "seconds": round(time.time() - start, 1), "plans": reports}, indent=1) + "\n")
    print(markdown(reports))
    print()
    print(roles_table(reports))


if __name__ == "__main__":
    main()
