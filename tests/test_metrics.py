"""Tests for stepdistill.metrics: Frechet distance, weighted Gaussian stats, KID, effective dimension."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from stepdistill.metrics import (
    effective_dimension,
    frechet_distance,
    gaussian_stats,
    kernel_inception_distance,
    precision_recall,
)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    """A well-conditioned random full-rank covariance with non-trivial eigenvectors."""
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ----------------------------------------------------------------------------
# frechet_distance


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert isinstance(got, float)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_commuting_full_covariances():
    rng = np.random.default_rng(1)
    d = 8
    q = _random_orthogonal(rng, d)
    a, b = rng.uniform(0.05, 4.0, d), rng.uniform(0.05, 4.0, d)
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    assert not np.allclose(c1, np.diag(np.diag(c1)))  # genuinely full matrices
    np.testing.assert_allclose(c1 @ c2, c2 @ c1, atol=1e-10)  # ... that commute
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    np.testing.assert_allclose(frechet_distance(mu1, c1, mu2, c2), expected, rtol=1e-9)


def test_frechet_matches_scipy_sqrtm_non_commuting():
    rng = np.random.default_rng(2)
    d = 16
    for _ in range(3):
        c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
        assert not np.allclose(c1 @ c2, c2 @ c1, atol=1e-3)
        mu1, mu2 = rng.standard_normal(d), 0.5 * rng.standard_normal(d)
        covmean = scipy.linalg.sqrtm(c1 @ c2)
        covmean = np.real(covmean)
        expected = ((mu1 - mu2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
        np.testing.assert_allclose(frechet_distance(mu1, c1, mu2, c2), expected, rtol=1e-6)


def test_frechet_symmetric_and_zero_for_identical():
    rng = np.random.default_rng(3)
    d = 16
    c1, c2 = _random_spd(rng, d), _random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    fd12, fd21 = frechet_distance(mu1, c1, mu2, c2), frechet_distance(mu2, c2, mu1, c1)
    assert fd12 > 0
    np.testing.assert_allclose(fd12, fd21, rtol=1e-9)
    assert abs(frechet_distance(mu1, c1, mu1, c1)) < 1e-9 * np.trace(c1)
    # Identical stats also give 0 for a rank-deficient covariance (clipping of round-off).
    x = rng.standard_normal((5, d))
    c_low = x.T @ x / 5
    assert abs(frechet_distance(mu1, c_low, mu1, c_low)) < 1e-6 * np.trace(c_low)


def test_frechet_shape_mismatch_raises():
    rng = np.random.default_rng(4)
    c3, c4 = _random_spd(rng, 3), _random_spd(rng, 4)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), c3, np.zeros(4), c3)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), c3, np.zeros(3), c4)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(4), c4, np.zeros(4), c3)


def test_frechet_mean_covariance_dimension_mismatch_raises():
    rng = np.random.default_rng(5)
    c4 = _random_spd(rng, 4)
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), c4, np.ones(3), c4)


# ----------------------------------------------------------------------------
# gaussian_stats


def test_gaussian_stats_unweighted_matches_numpy():
    rng = np.random.default_rng(10)
    f = rng.standard_normal((200, 5)) @ rng.standard_normal((5, 5)) + 3.0
    mu, cov = gaussian_stats(f)
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f, rowvar=False), rtol=1e-12)
    # float32 input is promoted to float64
    mu32, cov32 = gaussian_stats(f.astype(np.float32))
    assert mu32.dtype == np.float64 and cov32.dtype == np.float64


def test_gaussian_stats_uniform_weights_equal_unweighted():
    rng = np.random.default_rng(11)
    f = rng.standard_normal((150, 4)) * np.array([1.0, 2.0, 0.5, 3.0]) + 1.0
    mu0, cov0 = gaussian_stats(f)
    for scale in (1.0, 1 / 150, 7.3):  # weights need not be normalised
        mu, cov = gaussian_stats(f, weights=np.full(150, scale))
        np.testing.assert_allclose(mu, mu0, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(cov, cov0, rtol=1e-10, atol=1e-14)


def test_gaussian_stats_inverse_class_count_weights_balance_classes():
    rng = np.random.default_rng(12)
    a = rng.standard_normal((40, 3)) * 0.5 + np.array([2.0, 0.0, -1.0])
    b = rng.standard_normal((160, 3)) * 1.5 + np.array([-1.0, 3.0, 0.0])  # 4x over-represented
    f = np.concatenate([a, b])
    w = np.concatenate([np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))])
    mu, cov = gaussian_stats(f, weights=w)
    # Each class counts half: the mean is the average of the class means, exactly.
    np.testing.assert_allclose(mu, 0.5 * (a.mean(0) + b.mean(0)), rtol=1e-12, atol=1e-14)
    # Covariance of the balanced mixture: within-class average + between-class spread.
    ma, mb = a.mean(0), b.mean(0)
    cov_a = np.cov(a, rowvar=False, bias=True)
    cov_b = np.cov(b, rowvar=False, bias=True)
    balanced = 0.5 * (cov_a + cov_b) + 0.25 * np.outer(ma - mb, ma - mb)
    wn = w / w.sum()
    sum_w2 = (wn**2).sum()
    np.testing.assert_allclose(cov, balanced / (1 - sum_w2), rtol=1e-10)
    # ... which the unweighted covariance is far from (the big class dominates it).
    assert not np.allclose(gaussian_stats(f)[1], cov, rtol=0.1)


def test_gaussian_stats_duplicated_cluster_weighted_by_one_third():
    rng = np.random.default_rng(13)
    a = rng.standard_normal((30, 4)) + 2.0
    b = rng.standard_normal((50, 4)) * 0.7 - 1.0
    plain = np.concatenate([a, b])
    dup = np.concatenate([np.repeat(a, 3, axis=0), b])  # every point of `a` three times
    w = np.concatenate([np.full(3 * len(a), 1 / 3), np.ones(len(b))])
    mu_p, cov_p = gaussian_stats(plain)
    mu_d, cov_d = gaussian_stats(dup, weights=w)
    np.testing.assert_allclose(mu_d, mu_p, rtol=1e-12, atol=1e-14)
    # Same weighted second moment; only the normaliser differs: N - 1 for the plain set vs
    # N (1 - sum w_n^2) with normalised weights w_n for the duplicated one.
    n = len(plain)
    wn = w / w.sum()
    np.testing.assert_allclose(cov_d * (1 - (wn**2).sum()), cov_p * (n - 1) / n, rtol=1e-10)
    # ... so the two covariances agree loosely; the duplicated set has more effective samples
    # (1 / sum w_n^2 = 85.3 > 80), hence a slightly smaller bias correction.
    np.testing.assert_allclose(cov_d, cov_p, rtol=0.01, atol=1e-12)
    assert np.trace(cov_d) < np.trace(cov_p)


# ----------------------------------------------------------------------------
# kernel_inception_distance

_KID_KW = dict(num_subsets=10, subset_size=300, seed=0)


def _gauss(seed: int, n: int = 600, d: int = 8, shift: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    x[:, 0] += shift
    return x


def test_kid_near_zero_for_same_distribution():
    kid, std = kernel_inception_distance(_gauss(20, n=1000), _gauss(21, n=1000),
                                         num_subsets=10, subset_size=500, seed=0)
    assert std > 0
    assert abs(kid) < 3 * std
    # small in absolute terms: a mean shift of 0.5 std gives ~0.15 at these sizes
    assert abs(kid) < 0.015


def test_kid_positive_and_increasing_with_mean_shift():
    ref = _gauss(30)
    kids = [kernel_inception_distance(ref, _gauss(31, shift=s), **_KID_KW) for s in (0.0, 0.5, 1.0, 2.0)]
    means = [k for k, _ in kids]
    assert means[1] > 3 * kids[1][1] and means[1] > 0.05  # clearly positive at shift 0.5
    assert means[0] < means[1] < means[2] < means[3]
    # deterministic for a fixed seed
    assert kernel_inception_distance(ref, _gauss(31, shift=1.0), **_KID_KW) == kids[2]


def test_kid_exact_value_small_case():
    """Unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3 on one subset holding every sample."""
    rng = np.random.default_rng(40)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((7, 3)) + 0.3
    k = lambda p, q: (p @ q / 3 + 1) ** 3  # noqa: E731
    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    kid, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=100)
    np.testing.assert_allclose(kid, kxx + kyy - 2 * kxy, rtol=1e-10)
    assert std < 1e-12  # every subset is a permutation of the full sets


# ----------------------------------------------------------------------------
# precision_recall


def test_precision_recall_separates_fidelity_from_coverage():
    """Two well-separated clusters of real samples: a generator covering one of them is precise but
    recalls half; one between them recalls nothing and is not precise; a fresh draw of the same
    distribution is near (1, 1)."""
    rng = np.random.default_rng(50)
    real = np.concatenate([rng.standard_normal((300, 4)), rng.standard_normal((300, 4)) + 20])
    same = np.concatenate([rng.standard_normal((300, 4)), rng.standard_normal((300, 4)) + 20])
    one_mode = rng.standard_normal((600, 4))
    between = rng.standard_normal((600, 4)) + 10
    p, r = precision_recall(same, real)
    assert p > 0.9 and r > 0.9
    p, r = precision_recall(one_mode, real)
    assert p > 0.9 and r == pytest.approx(0.5, abs=0.05)
    assert precision_recall(between, real) == (0.0, 0.0)


def test_precision_recall_exact_small_case():
    """k = 1 on the line: real {0, 1, 3}, radii (1, 1, 2); fake {0.5, 10, 11}, radii (9.5, 1, 1)."""
    real, fake = np.array([[0.0], [1.0], [3.0]]), np.array([[0.5], [10.0], [11.0]])
    p, r = precision_recall(fake, real, k=1)
    assert p == pytest.approx(1 / 3) and r == pytest.approx(1.0)  # 0.5 lies in real's balls; 9.5 reaches all
    with pytest.raises(ValueError, match="more than k=3"):
        precision_recall(fake, real)
    with pytest.raises(ValueError, match="one width"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))


# ----------------------------------------------------------------------------
# effective_dimension


def test_effective_dimension_isotropic():
    f = np.random.default_rng(50).standard_normal((5000, 8))
    assert abs(effective_dimension(f) - 8) < 0.05 * 8


def test_effective_dimension_one_dominant_direction():
    variances = np.array([100.0] + [1.0] * 7)
    expected = variances.sum() ** 2 / (variances**2).sum()  # 107^2 / 10007 ~ 1.144
    rng = np.random.default_rng(51)
    q = _random_orthogonal(rng, 8)  # dominant direction not axis-aligned
    f = (rng.standard_normal((5000, 8)) * np.sqrt(variances)) @ q.T
    got = effective_dimension(f)
    assert abs(got - expected) < 0.05 * expected
    assert got < 1.25


def test_effective_dimension_dead_unit_lowers_it():
    rng = np.random.default_rng(52)
    f = rng.standard_normal((2000, 8)) * np.linspace(0.5, 1.5, 8)
    dead = f.copy()
    dead[:, 3] = 0.7  # a constant (dead) unit
    full, reduced = effective_dimension(f), effective_dimension(dead)
    assert reduced < full - 0.5
    # ... and equals the effective dimension of the 7 live units alone.
    np.testing.assert_allclose(reduced, effective_dimension(np.delete(f, 3, axis=1)), rtol=1e-8)
