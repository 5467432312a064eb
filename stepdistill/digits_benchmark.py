"""The digits benchmark: FD, FD2, KID, precision / recall and class accuracy of class-balanced generated sets.

Protocol (every recipe reports against it, so methods stay comparable):
- features: penultimate pre-activation features of the shipped `DigitsClassifier`, divided by one
  scalar (the reference's root-mean-square per-unit standard deviation); FD, KID, precision and recall
  live there;
- FD2, a second feature space: the same classifier's third convolution, mean- and max-pooled over space
  (128 features, scaled the same way). The penultimate features compress gaps near the teacher (a few
  class-separating directions carry most of their variance); chosen among four candidates for resolving
  power (`python experiments/digits_benchmark/feature_spaces.py`): the teacher's DPM-Solver++ at 8 NFE sits 9.6
  pooled seed standard deviations above its default in FD2, 2.1 in FD, 3.7 and 5.6 in a separately trained
  classifier's penultimate and pooled features. Its values are larger (floor 1.59): compare FD2 with FD2;
- reference: the 797-image `reference` split, each class weighted equally (its class counts range
  74..83, and unbalanced sets alone moved FD by a factor of three in an early prototype);
- a generated set is `n_per_class` images of every class (1,000 by default) drawn with one seed;
  FD is reported as the mean and standard deviation over several seeds;
- floor: the 1,000-image `heldout` split (100 per class) against the same reference: what a perfect
  generator scores at this sample count.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .classifier import DigitsClassifier
from .data.digits import NUM_CLASSES, load_digits_tensors
from .metrics import effective_dimension, frechet_distance, gaussian_stats, kernel_inception_distance, precision_recall

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# The shipped teacher's rows on this protocol, written by `make baseline`
# (experiments/digits_benchmark/teacher_baseline.py).
DIGITS_SHAPE = (1, 16, 16)  # one sample: the shipped digits teacher's images
TEACHER_TABLE = ASSETS.parent / "eval" / "results" / "teacher_digits.json"
SampleFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (labels, generator) -> images


class FeatureSpace:
    """One feature space of the benchmark: `extract(images) -> features`, divided by one scalar (the
    reference's root-mean-square per-unit standard deviation), and the reference's class-balanced Gaussian.
    One scalar keeps FD's geometry and puts KID's cubic kernel in a sane numeric range."""

    def __init__(self, extract: Callable[[torch.Tensor], torch.Tensor], ref_x: torch.Tensor, ref_y: torch.Tensor,
                 *, batch_size: int = 500):
        self.extract, self.batch_size, self.scale = extract, batch_size, 1.0
        raw = self.features(ref_x)
        self.scale = float(np.sqrt(raw.var(0).mean()))
        self.ref_features = raw / self.scale
        counts = np.bincount(ref_y.numpy(), minlength=NUM_CLASSES)
        self.ref_mu, self.ref_cov = gaussian_stats(self.ref_features, 1.0 / counts[ref_y.numpy()])

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        chunks = [self.extract(chunk.float().clamp(-1, 1).cpu()) for chunk in images.split(self.batch_size)]
        return torch.cat(chunks).double().numpy() / self.scale

    def fd(self, features: np.ndarray) -> float:
        return frechet_distance(*gaussian_stats(features), self.ref_mu, self.ref_cov)


class DigitsBenchmark:
    SECOND_FEATURES = ("DigitsClassifier third convolution's activations, mean- and max-pooled over space / reference "
                       "RMS std (stepdistill.digits_benchmark)")

    def __init__(self, classifier_dir: str | Path = ASSETS / "digits_classifier", *, n_per_class: int = 100,
                 batch_size: int = 500):
        self.classifier = DigitsClassifier.from_pretrained(classifier_dir)
        self.resolution = self.classifier.config["resolution"]
        self.n_per_class, self.batch_size = n_per_class, batch_size
        ref_x, ref_y = load_digits_tensors(self.resolution, "reference")
        self.space = FeatureSpace(self.classifier.features, ref_x, ref_y, batch_size=batch_size)
        self.ref_features = self.space.ref_features
        # FD2: a second space that resolves gaps near the teacher (eval/results/digits_feature_spaces.json)
        self.second = FeatureSpace(self.classifier.pooled_features, ref_x, ref_y, batch_size=batch_size)

    @property
    def n_samples(self) -> int:
        return self.n_per_class * NUM_CLASSES

    def labels(self) -> torch.Tensor:
        """Class-balanced labels 0..9 repeated, so any prefix of the set is nearly balanced."""
        return torch.arange(NUM_CLASSES).repeat(self.n_per_class)

    @torch.no_grad()
    def features_and_logits(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        if images.ndim != 4 or images.shape[1:] != (1, self.resolution, self.resolution):
            raise ValueError(f"expected images of shape (N, 1, {self.resolution}, {self.resolution}), "
                             f"got {tuple(images.shape)}")
        feats = self.space.features(images)
        logits = self.classifier.head(torch.from_numpy(feats * self.space.scale).float())
        return feats, logits.numpy()

    def score(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """FD, KID, precision / recall and accuracy of one generated set against the reference."""
        feats, logits = self.features_and_logits(images)
        kid, _ = kernel_inception_distance(feats, self.ref_features, num_subsets=50)
        precision, recall = precision_recall(feats, self.ref_features)
        acc = float((logits.argmax(1) == labels.cpu().numpy()).mean())
        return dict(fd=self.space.fd(feats), fd2=self.second.fd(self.second.features(images)), kid=kid, precision=precision,
                    recall=recall, accuracy=acc)

    def floor(self) -> dict[str, float]:
        """The held-out real split scored like a generated set: the best achievable values."""
        x, y = load_digits_tensors(self.resolution, "heldout")
        return {**self.score(x, y), "effective_dimension": effective_dimension(self.ref_features),
                "feature_dim": int(self.ref_features.shape[1])}

    def resampled(self, split: str, seed: int, *, replace: bool) -> dict[str, float]:
        """A real split scored like a generated set: `n_per_class` images of every class drawn from it
        with or without replacement. Drawn with replacement from `all` (the teacher's training set), it
        is what a perfect sampler of the training distribution scores."""
        x, y = load_digits_tensors(self.resolution, split)
        g = torch.Generator().manual_seed(seed)
        idx = []
        for c in range(NUM_CLASSES):
            pool = torch.nonzero(y == c).flatten()
            if not replace and len(pool) < self.n_per_class:
                raise ValueError(f"split {split!r} has {len(pool)} images of class {c}, fewer than {self.n_per_class}")
            pick = torch.randint(0, len(pool), (self.n_per_class,), generator=g) if replace \
                else torch.randperm(len(pool), generator=g)[:self.n_per_class]
            idx.append(pool[pick])
        idx = torch.cat(idx)
        return self.score(x[idx], y[idx])

    def evaluate(self, sample_fn: SampleFn, seeds: list[int]) -> dict:
        """Score `sample_fn(labels, generator)` once per seed; mean/std across seeds, median speed."""
        per_seed, seconds = [], []
        labels = self.labels()
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            start = time.perf_counter()
            images = sample_fn(labels, g)
            seconds.append((time.perf_counter() - start) / len(labels))
            per_seed.append(self.score(images, labels))
        return aggregate(per_seed, seconds)


    def seconds_per_image(self, sample_fn: SampleFn, *, n_per_class: int = 10) -> float:
        """Time `sample_fn` on a small class-balanced batch: a speed on this machine without a full set."""
        labels = torch.arange(NUM_CLASSES).repeat(n_per_class)
        start = time.perf_counter()
        sample_fn(labels, torch.Generator().manual_seed(0))
        return (time.perf_counter() - start) / len(labels)


def is_shipped_teacher(teacher: str) -> bool:
    """Whether `teacher` (a recipe's `model.teacher`) names the shipped digits teacher itself (not a view of it)."""
    from .teachers import SHIPPED, shipped_folder

    return not teacher.endswith("-edm") and shipped_folder(teacher) == SHIPPED["digits"]


def table_rows(wanted: list[tuple[str, int]], *, seeds: list[int], n_samples: int,
               path: Path = TEACHER_TABLE) -> list[dict] | None:
    """The shipped teacher's rows (sampler, NFE) from its committed table; None when the table is missing,
    was measured at another sample count or on other seeds, or lacks a row."""
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    if table.get("n_samples") != n_samples or list(table.get("seeds", [])) != list(seeds):
        return None
    rows = [next((r for r in table["rows"] if r["sampler"] == sampler and r["nfe"] == nfe), None)
            for sampler, nfe in wanted]
    if any(r is None or not {"precision", "recall"} <= set(r) for r in rows):
        return None
    return [dict(r) for r in rows]


def default_row(rows: list[dict]) -> dict | None:
    """The teacher's default row of a results table (marked `"default": true`), if it has one."""
    return next((r for r in rows if r.get("default")), None)


def spread_cell(row: dict, key: str) -> str:
    """"mean ± std" of a distance in a result row; "—" where the row predates it (committed tables before FD2)."""
    return f"{row[key]:.3f} ± {row[key + '_std']:.3f}" if key in row else "—"


def markdown_table(rows: list[dict]) -> str:
    """Result rows as the Markdown table the recipes and the teacher baseline print."""
    lines = [("| model | sampler | NFE | FD (mean ± std) | FD2 (mean ± std) | KID | precision | recall | accuracy | "
              "ms / image |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']}{' (default)' if r.get('default') else ''} | {r['sampler']} | {r['nfe']} | "
                     f"{r['fd']:.3f} ± {r['fd_std']:.3f} | {spread_cell(r, 'fd2')} | {r['kid']:.4f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['accuracy']:.3f} | {1e3 * r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def aggregate(per_seed: list[dict], seconds: list[float]) -> dict:
    """One row from per-seed scores: FD, FD2 and KID mean and std across seeds (and FD's and FD2's per-seed
    values), mean precision, recall and accuracy, median speed."""
    def spread(key: str) -> dict:  # mean and sample std of one distance across seeds
        v = np.array([r[key] for r in per_seed])
        return {key: float(v.mean()), f"{key}_std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}

    return dict(
        **spread("fd"), fd_per_seed=[round(float(r["fd"]), 4) for r in per_seed],
        **spread("fd2"), fd2_per_seed=[round(float(r["fd2"]), 4) for r in per_seed], **spread("kid"),
        precision=float(np.mean([r["precision"] for r in per_seed])),
        recall=float(np.mean([r["recall"] for r in per_seed])),
        accuracy=float(np.mean([r["accuracy"] for r in per_seed])),
        seconds_per_image=float(np.median(seconds)),
    )


def teacher_sample_fn(denoiser, schedule, *, sampler: str, steps: int, spacing: str = "karras",
                      shape: tuple[int, ...] = (1, 16, 16)) -> SampleFn:
    """A `SampleFn` that runs an ODE sampler on a class-conditional denoiser (`class_labels=`)."""
    from functools import partial

    from .samplers import prior_noise, sample

    def fn(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = prior_noise(schedule, (len(labels), *shape), generator=generator)
        return sample(partial(denoiser, class_labels=labels), schedule, noise, sampler=sampler, steps=steps,
                      spacing=spacing)

    return fn
