"""The super-resolution benchmark on the held-out natural-image patches (`stepdistill.data.patches`, split "test":
images no model trained on).

Each model is a `SampleFn` over the test patches' indices, `(labels, generator) -> HR images in [-1, 1]`: a
student whose conditioner is `patches_conditioner(...)` (`dataclasses.replace(student, conditioner=...)`), the teacher through a
sampler (`teacher_fn`), or the bicubic baseline (`bicubic_fn`). Every row reports, on uint8 images:
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
from .data import IndexLabelled, PatchDataset
from .degradations import Degradation
from .evaluation.sr import hf_energy_ratio, hf_spectrum_error, psnr, ssim

SampleFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

__all__ = ["SRBenchmark", "patches_conditioner", "teacher_fn", "bicubic_fn", "save_crop_grid", "is_sr_student",
           "evaluate_sr_student", "NUM_TEST_PATCHES"]

NUM_TEST_PATCHES = 256


def patches_conditioner(resolution: int, degradation: Degradation, *, num_patches: int = 256,
                        seed: int = 0) -> LRConditioner:
    """The held-out patches (positions drawn once from `seed`) and their degraded copies, as a condition."""
    patches = IndexLabelled(PatchDataset(resolution, scale=degradation.scale, num_patches=num_patches, split="test",
                                         seed=seed, degradation=degradation))
    return LRConditioner(patches, degradation, channels=3)


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

    def evaluate(self, fn: SampleFn, **row) -> tuple[dict, torch.Tensor]:
        """A result row (the metrics' means over patches, with `row`'s fields) and the images."""
        images, seconds = self.images(fn)
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


def is_sr_student(student) -> bool:
    """A one-model super-resolution student (conditioned on an LR image) the patch benchmark can measure."""
    return isinstance(getattr(student, "conditioner", None), LRConditioner)


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
