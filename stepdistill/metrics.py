"""Distribution metrics on feature vectors: Frechet distance, unbiased KID, precision and recall,
effective dimension.

Everything runs in float64 numpy: these are small (N x D, D <= 2048) and precision matters more
than speed for a square root of a covariance product.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gaussian_stats", "frechet_distance", "kernel_inception_distance", "precision_recall",
           "effective_dimension", "sliced_wasserstein"]


def gaussian_stats(features, weights=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of (N, D) features, optionally with per-sample weights (e.g. 1 / class
    count, so an unbalanced reference set counts every class equally). Unweighted covariance uses
    the N - 1 normaliser, as numpy and clean-fid do."""
    f = np.asarray(features, dtype=np.float64)
    if weights is None:
        return f.mean(0), np.cov(f, rowvar=False)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu = w @ f
    d = f - mu
    cov = (d * w[:, None]).T @ d / (1 - (w**2).sum())  # reliability-weights unbiased estimator
    return mu, cov


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)) (Heusel et al. 2017, Eq. 6 / Dowson & Landau).

    tr((C1 C2)^(1/2)) is the sum of square roots of the eigenvalues of C1 C2, which are real and
    non-negative for covariance matrices; tiny negative round-off is clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.size
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, cov {cov1.shape} vs {cov2.shape}")
    eig = np.linalg.eigvals(cov1 @ cov2)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


def kernel_inception_distance(f1, f2, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3 (Binkowski et al.
    2018), averaged over random subsets as clean-fid does. Returns (mean, std over subsets)."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(len(f1), len(f2), subset_size)
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = f1[rng.choice(len(f1), m, replace=False)]
        y = f2[rng.choice(len(f2), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def precision_recall(fake, real, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019, Eq. 1-2): each set's manifold is the
    union of balls reaching every sample's k-th nearest neighbour within its own set. Precision is
    the fraction of fake samples inside the real manifold (fidelity), recall the fraction of real
    samples inside the fake manifold (coverage). FD folds both into one number; a mode-seeking
    generator keeps its precision and loses recall."""
    fake, real = np.asarray(fake, np.float64), np.asarray(real, np.float64)
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f"precision_recall needs (N, D) features of one width, got {fake.shape} and {real.shape}")
    if min(len(fake), len(real)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} samples per set, got {len(fake)} and {len(real)}")

    def dist(a, b):  # pairwise Euclidean distances, clipped at 0 against round-off
        return np.sqrt(np.clip((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T, 0, None))

    def radii(a):  # distance to the k-th nearest neighbour, the point itself excluded
        return np.sort(dist(a, a), axis=1)[:, k]

    cross = dist(fake, real)
    precision = float((cross <= radii(real)[None]).any(1).mean())
    recall = float((cross.T <= radii(fake)[None]).any(1).mean())
    return precision, recall


def effective_dimension(features) -> float:
    """Participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues: D for isotropic
    features, 1 when one direction carries everything. Dead or duplicated units lower it."""
    lam = np.clip(np.linalg.eigvalsh(np.cov(np.asarray(features, np.float64), rowvar=False)), 0, None)
    return float(lam.sum() ** 2 / (lam**2).sum())


def sliced_wasserstein(x, y, *, num_projections: int = 128, seed: int = 0) -> float:
    """Mean over random unit directions of the 1-D Wasserstein-1 distance between the projections
    (equal sample counts: sorted projections matched one to one). For low-dimensional toy data."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein needs equal shapes, got {x.shape} and {y.shape}")
    rng = np.random.default_rng(seed)
    dirs = rng.standard_normal((x.shape[1], num_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    return float(np.abs(np.sort(x @ dirs, axis=0) - np.sort(y @ dirs, axis=0)).mean())
