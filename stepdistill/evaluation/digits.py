"""The digits protocol on generated folders: `stepdistill.digits_benchmark.DigitsBenchmark`'s FD / KID /
precision / recall / accuracy, scored per image set and aggregated across sets exactly as
`DigitsBenchmark.evaluate` does (mean, sample std, per-set FD, median seconds per image)."""

from __future__ import annotations

import numpy as np
import torch

from ..digits_benchmark import DigitsBenchmark
from ..digits_benchmark import aggregate as aggregate_sets  # one row from per-set scores

__all__ = ["score_digits_set", "aggregate_sets"]


def score_digits_set(bench: DigitsBenchmark, images_u8: np.ndarray, labels) -> dict[str, float]:
    """uint8 NHWC single-channel images (as written by `generate_images`) -> FD, KID, precision, recall, accuracy."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 127.5 - 1
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    return bench.score(x, torch.as_tensor(labels, dtype=torch.long))
