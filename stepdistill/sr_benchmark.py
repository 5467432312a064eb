"""The super-resolution benchmark on the held-out natural-image patches (`stepdistill.data.patches`, split "test":
images no model trained on).

Each model is a `SampleFn` over the test patches' indices, `(labels, generator) -> HR images in [-1, 1]`: a
student whose conditioner is `patches_conditioner(...)` (`dataclasses.replace(student, conditioner=...)`), the teacher through a
sampler (`teacher_fn`), an exported pipeline run as a user runs it (`pipeline_fn`), or the bicubic baseline
(`bicubic_fn`). `folder_conditioner` puts a folder of LR images (and their HR images) in the patches' place;
`evaluate_sr_models` is `eval/evaluate.py sr`. Every row reports, on uint8 images:
PSNR and SSIM on the Y channel with `scale` pixels cropped from each border (BasicSR / pyiqa's
`test_y_channel=True`), the high-frequency spectrum error and energy ratio in the band a x`scale` model must
invent (`stepdistill.evaluation.sr`), and seconds per image at the benchmark's batch size on this machine.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .conditioning import LRConditioner
from .data import FolderPairs, IndexLabelled, PatchDataset
from .degradations import Degradation
from .evaluation.sr import hf_energy_ratio, hf_spectrum_error, psnr, ssim

SampleFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

__all__ = ["SRBenchmark", "patches_conditioner", "folder_conditioner", "teacher_fn", "pipeline_fn", "bicubic_fn",
           "save_crop_grid", "write_sr_results", "format_row", "evaluate_sr_models",
           "evaluate_sr_student", "NUM_TEST_PATCHES", "METRICS"]

NUM_TEST_PATCHES = 256
METRICS = ("PSNR / SSIM on Y (BT.601), border cropped by the scale (BasicSR, pyiqa test_y_channel); HF spectrum error "
           "and energy ratio above the LR Nyquist frequency (stepdistill.evaluation.sr)")


def patches_conditioner(resolution: int, degradation: Degradation, *, num_patches: int = 256,
                        seed: int = 0) -> LRConditioner:
    """The held-out patches (positions drawn once from `seed`) and their degraded copies, as a condition."""
    patches = IndexLabelled(PatchDataset(resolution, scale=degradation.scale, num_patches=num_patches, split="test",
                                         seed=seed, degradation=degradation))
    return LRConditioner(patches, degradation, channels=3)


def folder_conditioner(lr_dir: str | Path, scale: int, hr_dir: str | Path | None = None) -> LRConditioner:
    """A folder's LR images (each one's own, never re-degraded) as the condition, label i = the i-th by name."""
    return LRConditioner(FolderPairs(lr_dir, scale, hr_dir), Degradation(scale), channels=3)


def pipeline_fn(folder: str | Path, conditioner: LRConditioner) -> tuple[SampleFn, dict]:
    """An exported SR pipeline folder as a user runs it (stock diffusers, `pipe(image=LR)`), and its config."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)

    def fn(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        low = (conditioner.lr(labels) + 1) / 2
        return pipe(image=low, generator=generator, output_type="pt").images * 2 - 1

    return fn, dict(pipe.config)


def teacher_fn(denoiser, schedule, conditioner: LRConditioner, *, sampler: str, nfe: int,
               shape: tuple[int, ...]) -> SampleFn:
    """The teacher's images from noise through an ODE sampler at `nfe` evaluations."""
    from .samplers import prior_noise, sample, steps_for_nfe

    def fn(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = prior_noise(schedule, (len(labels), *shape), generator=generator)
        return sample(partial(denoiser, **conditioner.cond(labels)), schedule, noise, sampler=sampler,
                      steps=steps_for_nfe(sampler, nfe))

    return fn


def bicubic_fn(conditioner: LRConditioner) -> SampleFn:
    """The LR image, bicubic-upsampled: the regression-free baseline."""
    return lambda labels, generator: conditioner.cond(labels)["concat"]


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded as images are saved."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class SRBenchmark:
    conditioner: LRConditioner  # the held-out patches
    batch_size: int = 64
    seed: int = 0  # the samplers' noise

    @property
    def scale(self) -> int:
        return self.conditioner.scale

    @functools.cached_property
    def ground_truth(self) -> torch.Tensor:
        """Every held-out patch in [-1, 1], read once."""
        n = self.conditioner.num_classes
        return torch.stack([self.conditioner.dataset[i]["images"] for i in range(n)])

    @functools.cached_property
    def _ground_truth_uint8(self) -> np.ndarray:
        return _uint8(self.ground_truth)

    def images(self, fn: SampleFn) -> tuple[torch.Tensor, float]:
        """Every patch's output (in batches, one generator), and the seconds per image it took."""
        labels = torch.arange(self.conditioner.num_classes)
        generator = torch.Generator().manual_seed(self.seed)
        start, out = time.perf_counter(), []
        with torch.no_grad():
            for chunk in labels.split(self.batch_size):
                out.append(fn(chunk, generator).float().cpu())
        return torch.cat(out), (time.perf_counter() - start) / len(labels)

    def evaluate(self, fn: SampleFn, *, scored: bool = True, **row) -> tuple[dict, torch.Tensor]:
        """A result row (the metrics' means over patches, with `row`'s fields) and the images; `scored=False`:
        the time only (inputs without ground truth)."""
        images, seconds = self.images(fn)
        if not scored:
            return {**row, "seconds_per_image": round(seconds, 6)}, images
        out, gt = _uint8(images), self._ground_truth_uint8
        crop = self.scale
        metrics = {
            "psnr_y": np.mean([psnr(a, b, crop_border=crop, y_channel=True) for a, b in zip(out, gt)]),
            "ssim_y": np.mean([ssim(a, b, crop_border=crop, y_channel=True) for a, b in zip(out, gt)]),
            "hf_spectrum_error": np.mean([hf_spectrum_error(a, b, scale=crop, crop_border=crop) for a, b in zip(out, gt)]),
            "hf_energy_ratio": np.mean([hf_energy_ratio(a, b, scale=crop, crop_border=crop) for a, b in zip(out, gt)]),
        }
        return {**row, **{k: round(float(v), 4) for k, v in metrics.items()},
                "seconds_per_image": round(seconds, 6)}, images


def save_crop_grid(path: str | Path, columns: dict[str, torch.Tensor], *, conditioner: LRConditioner,
                   count: int = 6) -> Path:
    """Side by side, one row per patch: the LR input (nearest-neighbour enlarged), then each named column of
    images in [-1, 1] (bicubic, teacher, students, ground truth), labelled in the file's title strip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = torch.arange(min(count, conditioner.num_classes))
    low = conditioner.lr(labels)
    size = tuple(next(iter(columns.values())).shape[-2:])
    lr_big = torch.nn.functional.interpolate(low, size=size, mode="nearest")
    names = ["LR input", *columns]
    cols = [lr_big, *(c[: len(labels)] for c in columns.values())]
    fig, axes = plt.subplots(len(labels), len(cols), figsize=(1.6 * len(cols), 1.6 * len(labels)), squeeze=False)
    for j, (name, images) in enumerate(zip(names, cols)):
        for i in range(len(labels)):
            ax = axes[i][j]
            ax.imshow(_uint8(images[i: i + 1])[0], interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


CSV_KEYS = ["model", "sampler", "nfe", "psnr_y", "ssim_y", "hf_spectrum_error", "hf_energy_ratio", "seconds_per_image",
            "psnr_vs_teacher_db", "hf_error_vs_teacher", "speedup_vs_teacher"]


def write_sr_results(result: dict, out: str | Path, images: dict[str, torch.Tensor] | None = None, *,
                     conditioner: LRConditioner | None = None) -> list[Path]:
    """`out` (JSON), the rows as CSV beside it, and with `images` the crop grid (.png): the files written."""
    import csv
    import io
    import json

    from .io import atomic_write_text

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[k for k in CSV_KEYS if any(k in r for r in result["rows"])],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(result["rows"])
    atomic_write_text(out.with_suffix(".csv"), buf.getvalue())
    paths = [out, out.with_suffix(".csv")]
    if images:
        paths.append(save_crop_grid(out.with_suffix(".png"), images, conditioner=conditioner))
    return paths


def format_row(r: dict, width: int = 40) -> str:
    """One result row as a console line (the scores only where the row was scored)."""
    scores = (f"PSNR-Y {r['psnr_y']:.2f}  SSIM-Y {r['ssim_y']:.3f}  HF err {r['hf_spectrum_error']:.3f}  "
              f"HF energy {r['hf_energy_ratio']:.2f}  " if "psnr_y" in r else "")
    return f"{str(r['model'])[:width]:>{width}} {r.get('nfe', ''):>3} NFE  {scores}{1e3 * r['seconds_per_image']:.2f} ms"


def evaluate_sr_student(student, real_denoiser, schedule, *, teacher_sampler: str, teacher_nfe: int,
                        teacher_rows: bool = True, grid: str | Path | None = None) -> dict:
    """Rows on the held-out patches, measured in this call: bicubic, the teacher at its default sampler and
    at one step (DDIM), the student at its own steps; `grid`: also a crop grid of every row's images there."""
    from dataclasses import replace

    conditioner = patches_conditioner(student.shape[-1], student.conditioner.degradation,
                                      num_patches=NUM_TEST_PATCHES)
    bench = SRBenchmark(conditioner)
    rows, images = [], {}
    row, images["bicubic"] = bench.evaluate(bicubic_fn(conditioner), model="bicubic", nfe=0)
    rows.append(row)
    if teacher_rows:
        for sampler, nfe in ((teacher_sampler, teacher_nfe), ("ddim", 1)):
            fn = teacher_fn(real_denoiser, schedule, conditioner, sampler=sampler, nfe=nfe, shape=student.shape)
            row, images[f"teacher, {nfe} NFE"] = bench.evaluate(fn, model="teacher", sampler=sampler, nfe=nfe)
            rows.append(row | ({"default": True} if nfe == teacher_nfe else {}))
    mine = replace(student, conditioner=conditioner)
    row, images[student.name] = bench.evaluate(mine.sample_fn(), model=student.name, nfe=student.nfe)
    rows.append(row)
    images["HR"] = bench.ground_truth
    if grid is not None:
        save_crop_grid(grid, images, conditioner=conditioner)
    return {"benchmark": "sr_patches", "scale": bench.scale, "n_patches": NUM_TEST_PATCHES,
            "crop_border": bench.scale, "rows": rows}


def _sr_model(source: str):
    """("pipeline", folder, its sr_scale, its resolution) for an exported SR pipeline, else ("teacher", the loaded
    SR teacher, sr_scale, resolution); anything else is a ValueError."""
    import json

    from .teachers import load_teacher

    from .sampler_spec import STUDENT_JSON, read_student_json

    folder = Path(source)
    if (folder / STUDENT_JSON).is_file() and read_student_json(folder)[1]["condition"] == "lr":
        index = json.loads((folder / "model_index.json").read_text())
        unet = json.loads((folder / "unet" / "config.json").read_text())
        return "pipeline", folder, int(index["sr_scale"]), int(unet["sample_size"])
    teacher = load_teacher(source)
    if "sr_scale" not in teacher.index:
        raise ValueError(f"{source} is not a super-resolution model: its model_index.json has no sr_scale")
    return "teacher", teacher, int(teacher.index["sr_scale"]), int(teacher.net.config.sample_size)


def evaluate_sr_models(models: list[str], *, sampler: str = "dpmpp_2m", nfe: list[int] = (15,),
                       lr_dir: str | Path | None = None, hr_dir: str | Path | None = None, num_images: int = 256,
                       batch_size: int = 64, seed: int = 0, save_images: str | Path | None = None):
    """Bicubic, then each model (an SR teacher through `sampler` at each `nfe`, or an exported SR pipeline at its
    own steps) on the same inputs: the embedded test patches or `lr_dir` (scored against `hr_dir` when given).
    Every model is loaded and every input read before the first image is generated. Returns (result, the images
    by row name with "HR" when known, the conditioner) for `write_sr_results`."""
    loaded = [_sr_model(m) for m in models]
    scales = {m: item[2] for m, item in zip(models, loaded)}
    if len(set(scales.values())) > 1:
        raise ValueError(f"the models' scales differ: {scales}")
    scale, resolution = loaded[0][2], loaded[0][3]
    if lr_dir is None:
        conditioner = patches_conditioner(resolution, Degradation(scale), num_patches=num_images)
        inputs = f"the embedded held-out patches ({num_images}, {resolution}x{resolution}, bicubic x{scale})"
    else:
        conditioner = folder_conditioner(lr_dir, scale, hr_dir)
        inputs = f"{lr_dir}" + (f" against {hr_dir}" if hr_dir is not None else " (no ground truth: times only)")
    scored = lr_dir is None or hr_dir is not None
    bench = SRBenchmark(conditioner, batch_size=batch_size, seed=seed)
    rows, images = [], {}
    row, images["bicubic"] = bench.evaluate(bicubic_fn(conditioner), scored=scored, model="bicubic", nfe=0)
    rows.append(row)
    for source, (kind, model, _, _) in zip(models, loaded):
        if kind == "pipeline":
            fn, config = pipeline_fn(model, conditioner)
            steps = len(config["timesteps"])
            row, images[f"{Path(source).name}, {steps} NFE"] = bench.evaluate(fn, scored=scored, model=str(source),
                                                                               nfe=steps)
            rows.append(row)
            continue
        den, shape = model.denoiser(), tuple(conditioner.dataset[0]["images"].shape)
        for n in nfe:
            fn = teacher_fn(den, model.schedule, conditioner, sampler=sampler, nfe=n, shape=shape)
            row, images[f"{source}, {n} NFE"] = bench.evaluate(fn, scored=scored, model=str(source), sampler=sampler,
                                                               nfe=n)
            rows.append(row)
    if save_images is not None:
        _save_pngs(Path(save_images), images, conditioner)
    if scored:
        images["HR"] = bench.ground_truth
    result = {"benchmark": "sr_patches" if lr_dir is None else "sr_folder", "inputs": inputs, "scale": scale,
              "n_images": conditioner.num_classes, "crop_border": scale, "seed": seed, "batch_size": batch_size,
              "metrics": METRICS, "torch_threads": torch.get_num_threads(), "rows": rows}
    return result, images, conditioner


def _save_pngs(root: Path, images: dict[str, torch.Tensor], conditioner: LRConditioner) -> None:
    """Every row's outputs as PNG files, one folder per row, named after the inputs (or their index)."""
    import re

    from PIL import Image

    names = getattr(conditioner.dataset, "names", None) or [f"{i:04d}" for i in range(conditioner.num_classes)]
    for row, batch in images.items():
        folder = root / re.sub(r"[^A-Za-z0-9._-]+", "_", row).strip("_")
        folder.mkdir(parents=True, exist_ok=True)
        for name, arr in zip(names, _uint8(batch)):
            Image.fromarray(arr).save(folder / f"{name}.png")
