"""Results on disk: JSON (every setting needed to reproduce), CSV (one line per row), plots of quality
against NFE and against seconds per image, a sample grid and a short Markdown report."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..io import atomic_write_text

__all__ = ["write_report", "primary_metric", "sample_grid"]

CSV_KEYS = ("model", "sampler", "nfe", "fd", "fd_std", "fd2", "fd2_std", "fid", "fid_std", "kid", "kid_std", "precision", "recall",
            "accuracy", "clip_score", "psnr", "ssim", "seconds_per_image", "images", "processes")


def primary_metric(rows: Sequence[dict]) -> str:
    return "fd" if any("fd" in r for r in rows) else "fid"


def _csv(rows: Sequence[dict]) -> str:
    keys = [k for k in CSV_KEYS if any(k in r for r in rows)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows, key = result["rows"], primary_metric(result["rows"])
    fig, (ax_nfe, ax_time) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(f"{r['model']} ({r['sampler']})" for r in rows):
        rs = sorted((r for r in rows if f"{r['model']} ({r['sampler']})" == label), key=lambda r: r["nfe"])
        y, err = [r[key] for r in rs], [r.get(f"{key}_std", 0.0) for r in rs]
        ax_nfe.errorbar([r["nfe"] for r in rs], y, yerr=err, marker="o", capsize=3, label=label)
        ax_time.errorbar([1e3 * r["seconds_per_image"] for r in rs], y, yerr=err, marker="o", capsize=3, label=label)
    floor = result.get("floor", {}).get(key)
    for ax, xlabel in ((ax_nfe, "NFE"), (ax_time, "ms per image")):
        if floor is not None:
            ax.axhline(floor, color="k", ls="--", label="real vs real (floor)")
        ax.set_xscale("log", base=2 if ax is ax_nfe else 10)
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{key.upper()} (mean ± std over sets)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['protocol']['name']}: quality against NFE and against time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sample_grid(images_u8: Sequence[np.ndarray], labels: Sequence[str], path: Path, scale: int = 3) -> None:
    """One row per model/NFE (the first images of set 0), upscaled `scale` times with nearest neighbours."""
    from PIL import Image, ImageDraw

    cells = [np.repeat(np.repeat(im, scale, 1), scale, 2) for im in images_u8]
    n, h, w, c = cells[0].shape
    label_w, pad = 140, 2
    grid = np.full((len(cells) * (h + pad), label_w + n * (w + pad), 3), 255, np.uint8)
    for r, row in enumerate(cells):
        for i, im in enumerate(row):
            y, x = r * (h + pad), label_w + i * (w + pad)
            grid[y:y + h, x:x + w] = im if im.shape[-1] == 3 else np.repeat(im, 3, -1)
    img = Image.fromarray(grid)
    draw = ImageDraw.Draw(img)
    for r, text in enumerate(labels):
        draw.text((4, r * (h + pad) + h // 2 - 5), text, fill=(0, 0, 0))
    img.save(path)


def markdown(result: dict) -> str:
    rows, key = result["rows"], primary_metric(result["rows"])
    p = result["protocol"]
    lines = [f"# Evaluation: {p['name']}", "", p["description"], "",
             f"Command: `{result['command']}`", "",
             f"{p['num_images']} images per set, sets {list(result['set_seeds'])} (image seeds set x "
             f"{p['num_images']} + i, one generator per image); date {result['date']}; "
             f"{result['machine']['device']}, torch {result['machine']['torch']}, "
             f"{result['machine']['threads']} thread(s).", ""]
    extra = [k for k in ("fd2", "kid", "precision", "recall", "accuracy", "clip_score") if any(k in r for r in rows)]
    lines.append("| model | sampler | NFE | " + f"{key.upper()} (mean ± std) | " +
                 " | ".join(extra) + " | ms / image |")
    lines.append("|---" * (5 + len(extra)) + "|")
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in extra]
        lines.append(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {r[key]:.3f} ± {r.get(key + '_std', 0):.3f} | "
                     + " | ".join(cells) + f" | {1e3 * r['seconds_per_image']:.2f} |")
    if result.get("floor"):
        fd2 = f", FD2 {result['floor']['fd2']:.3f}" if "fd2" in result["floor"] else ""
        lines += ["", f"Floor (real held-out vs reference): {key.upper()} {result['floor'][key]:.3f}{fd2}."]
    for name, c in result.get("comparisons", {}).items():
        lines += ["", f"{name}: {c['text']}"]
    lines += ["", "Metric settings:", "", "```json", json.dumps(result["metric_settings"], indent=2), "```", ""]
    return "\n".join(lines)


def write_report(result: dict, out: str | Path, grid: tuple[list, list] | None = None) -> dict[str, Path]:
    """`out` is the JSON path; the CSV, plot (.png), sample grid (_samples.png) and report (.md) sit beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = dict(json=out, csv=out.with_suffix(".csv"), plot=out.with_suffix(".png"),
                 markdown=out.with_suffix(".md"), grid=out.with_name(out.stem + "_samples.png"))
    atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    atomic_write_text(paths["csv"], _csv(result["rows"]))
    plot(result, paths["plot"])
    atomic_write_text(paths["markdown"], markdown(result))
    if grid is not None:
        sample_grid(*grid, paths["grid"])
    else:
        paths.pop("grid")
    return paths
