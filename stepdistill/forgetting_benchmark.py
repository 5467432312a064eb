"""The forgetting figures of an unlearned digits student (SFD), beside the teacher's, on the digits benchmark's
protocol (`digits_benchmark`: the shipped classifier, its penultimate features, the reference split, the seeds):

- `forget_recognised`: the fraction of the samples asked for a forgotten digit that the classifier labels as that
  digit (the teacher's is its class accuracy on the digit: what forgetting brings down);
- `override_fraction`: the fraction labelled as its override digit (with a random override: as any retained digit);
- `retained_fd`: FD of `n_per_class` samples of every retained digit against the reference's retained digits (each
  weighted equally), in the benchmark's feature space and scale: what forgetting must not cost.
"""

from __future__ import annotations

import numpy as np
import torch

from .data.digits import NUM_CLASSES, load_digits_tensors
from .digits_benchmark import DigitsBenchmark, SampleFn
from .metrics import frechet_distance, gaussian_stats


class RetainedSpace:
    """The benchmark's penultimate feature space (its scale) with the reference restricted to the retained classes."""

    def __init__(self, bench: DigitsBenchmark, retained: list[int]):
        self.bench = bench
        ref_x, ref_y = load_digits_tensors(bench.resolution, "reference")
        keep = torch.isin(ref_y, torch.tensor(retained))
        feats, y = bench.space.features(ref_x[keep]), ref_y[keep].numpy()
        counts = np.bincount(y, minlength=NUM_CLASSES)
        self.mu, self.cov = gaussian_stats(feats, 1.0 / counts[y])

    def fd(self, images: torch.Tensor) -> float:
        return frechet_distance(*gaussian_stats(self.bench.space.features(images)), self.mu, self.cov)


def forgetting_scores(bench: DigitsBenchmark, sample_fn: SampleFn, forget: list[int], override: list[int] | str,
                      seeds: list[int], retained_space: RetainedSpace | None = None) -> dict:
    """The three figures for `sample_fn(labels, generator)`, mean (and std of the FD) over `seeds`."""
    retained = [c for c in range(NUM_CLASSES) if c not in forget]
    space = retained_space or RetainedSpace(bench, retained)
    asked = torch.tensor(forget).repeat_interleave(bench.n_per_class)
    target = (None if override == "random" else torch.tensor(override).repeat_interleave(bench.n_per_class))
    kept = torch.tensor(retained).repeat(bench.n_per_class)
    recognised, overridden, fds = [], [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        _, logits = bench.features_and_logits(sample_fn(asked, g))
        said = torch.from_numpy(logits.argmax(1))
        recognised.append(float((said == asked).float().mean()))
        overridden.append(float((~torch.isin(said, torch.tensor(forget)) if target is None else said == target)
                                .float().mean()))
        fds.append(space.fd(sample_fn(kept, g)))
    return dict(forget_recognised=float(np.mean(recognised)), override_fraction=float(np.mean(overridden)),
                retained_fd=float(np.mean(fds)), retained_fd_std=float(np.std(fds, ddof=1)) if len(fds) > 1 else 0.0,
                retained_fd_per_seed=[round(f, 4) for f in fds])
