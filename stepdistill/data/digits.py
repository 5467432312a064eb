"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes) as a tiny image benchmark.

Images are upsampled bilinearly to `resolution` (16 by default: the 8x8 source holds no detail that
32x32 would show, and 16x16 makes every network pass ~7x cheaper on a CPU) and scaled to [-1, 1].

A fixed, class-balanced split serves the benchmark: `heldout` has 100 images of every class
(1,000), `reference` the remaining 797. The reference split defines the real statistics of the
Frechet distance; the held-out split measured against it gives the real-vs-real floor at the same
sample count as a generated set of 1,000. The shipped teacher and classifier train on `all`, so both splits
are equally familiar to them; the control teacher (`digits-heldout`) trains on `heldout` only, and whatever
real images a recipe takes from it (a GAN's, ECT's) come from that split too (`training_split`), never from
the reference.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

NUM_CLASSES = 10
HELDOUT_PER_CLASS = 100
SPLIT_SEED = 0
Split = Literal["all", "reference", "heldout"]


@lru_cache(maxsize=4)
def _load(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1), torch.from_numpy(data.target.astype(np.int64))


def split_indices(split: Split) -> np.ndarray:
    """Indices into the 1,797 images for a split (deterministic, independent of resolution)."""
    _, labels = _load(8)
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(SPLIT_SEED)
    heldout = np.concatenate([rng.permutation(np.flatnonzero(labels.numpy() == c))[:HELDOUT_PER_CLASS]
                              for c in range(NUM_CLASSES)])
    if split == "heldout":
        return np.sort(heldout)
    if split == "reference":
        return np.setdiff1d(np.arange(len(labels)), heldout)
    raise ValueError(f"unknown digits split {split!r}; expected 'all', 'reference' or 'heldout'")


def training_split(teacher_folder: str | Path) -> Split:
    """The digits split a teacher folder was trained on: `split` in the `train_config.yaml` that
    `recipes/train_teacher.py` writes beside the network; `all` where the folder has none (older or
    foreign teachers)."""
    import yaml

    path = Path(teacher_folder) / "train_config.yaml"
    split = (yaml.safe_load(path.read_text()) or {}).get("split", "all") if path.is_file() else "all"
    if split not in get_args(Split):
        raise ValueError(f"{path} names digits split {split!r}; expected one of {get_args(Split)}")
    return split


def load_digits_tensors(resolution: int = 16, split: Split = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, R, R) in [-1, 1], labels (N,)) for a split."""
    if resolution < 8:
        raise ValueError(f"digits resolution must be >= 8, got {resolution}")
    images, labels = _load(resolution)
    idx = torch.from_numpy(split_indices(split))
    return images[idx], labels[idx]


class DigitsDataset(Dataset):
    """Items `{"images": (1, R, R) in [-1, 1], "class_labels": int64 scalar}`."""

    num_classes = NUM_CLASSES

    def __init__(self, resolution: int = 16, split: Split = "all"):
        self.images, self.labels = load_digits_tensors(resolution, split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"images": self.images[i], "class_labels": self.labels[i]}
