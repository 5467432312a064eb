"""The digits protocol on generated folders: `stepdistill.benchmark.DigitsBenchmark`'s FD / KID /
accuracy, scored per image set and aggregated across sets exactly as `DigitsBenchmark.evaluate` does
(mean, sample std, per-set FD, median seconds per image)."""

from __future__ import annotations

import numpy as np
import torch

from ..benchmark import DigitsBenchmark

__all__ = ["score_digits_set", "aggregate_sets"]


def score_digits_set(bench: DigitsBenchmark, images_u8: np.ndarray, labels) -> dict[str, float]:
    """uint8 NHWC single-channel images (as written by `generate_images`) -> FD, KID, accuracy."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    return bench.score(x, torch.as_tensor(labels, dtype=torch.long))


def aggregate_sets(per_set: list[dict], seconds: list[float]) -> dict:
    fds = np.array([r["fd"] for r in per_set])
    kids = np.array([r["kid"] for r in per_set])
    return dict(
        fd=float(fds.mean()), fd_std=float(fds.std(ddof=1)) if len(fds) > 1 else 0.0,
        fd_per_seed=[round(float(v), 4) for v in fds],
        kid=float(kids.mean()), kid_std=float(kids.std(ddof=1)) if len(kids) > 1 else 0.0,
        accuracy=float(np.mean([r["accuracy"] for r in per_set])),
        seconds_per_image=float(np.median(seconds)),
    )
