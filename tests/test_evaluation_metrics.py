"""The harness's metric arithmetic: Frechet distance (closed form, scipy) and SR PSNR/SSIM (scikit-image)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stepdistill.evaluation.sr import psnr, rgb_to_y, ssim
from stepdistill.metrics import frechet_distance


def test_frechet_distance_closed_form_for_commuting_gaussians():
    """Diagonal covariances: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2."""
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    # The same Gaussians in a rotated basis: FD is invariant.
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    fd = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert fd == pytest.approx(expected, rel=1e-9)
    assert frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(4.0 + 1.0)  # (1-3)^2 + (2-1)^2


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for d in (3, 16, 64):
        a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
        c1, c2 = a @ a.T / d + 0.05 * np.eye(d), b @ b.T / d + 0.05 * np.eye(d)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        ref = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-8, abs=1e-10)


def _pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    return a, b


def test_y_channel_is_bt601_as_skimage():
    a, _ = _pair((9, 7, 3))
    np.testing.assert_allclose(rgb_to_y(a), rgb2ycbcr(a)[..., 0], atol=1e-9)


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_ssim_agree_with_skimage(crop):
    a, b = _pair((48, 40, 3))
    c = (slice(crop, -crop), slice(crop, -crop)) if crop else (slice(None), slice(None))
    kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert psnr(a, b, crop_border=crop) == pytest.approx(peak_signal_noise_ratio(a[c], b[c], data_range=255), rel=1e-10)
    assert ssim(a, b, crop_border=crop) == pytest.approx(
        structural_similarity(a[c].astype(float), b[c].astype(float), channel_axis=-1, **kw), rel=1e-6)
    ya, yb = rgb2ycbcr(a)[..., 0][c], rgb2ycbcr(b)[..., 0][c]
    assert psnr(a, b, crop_border=crop, y_channel=True) == pytest.approx(
        peak_signal_noise_ratio(ya, yb, data_range=255), rel=1e-9)
    assert ssim(a, b, crop_border=crop, y_channel=True) == pytest.approx(structural_similarity(ya, yb, **kw), rel=1e-6)
    # grayscale input and identical images
    assert ssim(a[..., 0], a[..., 0]) == pytest.approx(1.0)
    assert psnr(a, a) == float("inf")
