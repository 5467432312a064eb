"""PSNR and SSIM for super-resolution, as BasicSR (and pyiqa's `test_y_channel=True`) compute them.

Images are uint8-range arrays (H, W) or (H, W, C) RGB. `crop_border` pixels are removed from every
side first (SR papers crop the scale factor). `y_channel=True` scores the ITU-R BT.601 luma
Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 (range 16..235) instead of the RGB channels.
SSIM: 11x11 Gaussian window, sigma 1.5, K = (0.01, 0.03), data range 255, 'valid' filtering (no
padding), the mean over channels (Wang et al. 2004; BasicSR `calculate_ssim`).

The perceptual side, offline and network-free: what a x`scale` model must invent is the detail above the LR
image's Nyquist frequency (radial frequency > 1 / (2 scale) cycles per pixel). `hf_spectrum_error` is the mean
absolute difference of log amplitude spectra there between output and ground truth (the log-spectral distance
of audio super-resolution, restricted to the missing band): a blurred, regression-to-the-mean output has too
little amplitude there and scores high, as does one with the wrong texture; `hf_energy_ratio` is the output's
energy in that band over the ground truth's (1: as much detail; < 1 blur, > 1 noise). Both on the Y channel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SRMetricConfig", "rgb_to_y", "psnr", "ssim", "hf_spectrum_error", "hf_energy_ratio"]


@dataclass(frozen=True)
class SRMetricConfig:
    y_channel: bool = True  # most SR papers; pyiqa's 'psnr' default is RGB, 'ssim' is Y
    crop_border: int = 0  # usually the scale factor (4 for x4)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of a uint8-range RGB image (..., 3), in 16..235 (float64)."""
    img = np.asarray(img, np.float64)
    return 16.0 + img @ np.array([65.481, 128.553, 24.966]) / 255.0


def _prepare(img1, img2, crop_border: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(img1, np.float64), np.asarray(img2, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if y_channel and a.ndim == 3 and a.shape[-1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    if crop_border:
        a, b = a[crop_border:-crop_border, crop_border:-crop_border], b[crop_border:-crop_border, crop_border:-crop_border]
    return (a[..., None], b[..., None]) if a.ndim == 2 else (a, b)


def psnr(img1, img2, *, crop_border: int = 0, y_channel: bool = False) -> float:
    """10 log10(255^2 / MSE); inf for identical images."""
    a, b = _prepare(img1, img2, crop_border, y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _ssim_channel(a: np.ndarray, b: np.ndarray, window: np.ndarray) -> float:
    from scipy.signal import convolve2d

    def filt(x):
        return convolve2d(x, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean())


def ssim(img1, img2, *, crop_border: int = 0, y_channel: bool = False) -> float:
    a, b = _prepare(img1, img2, crop_border, y_channel)
    window = _gaussian_window()
    return float(np.mean([_ssim_channel(a[..., c], b[..., c], window) for c in range(a.shape[-1])]))


def _missing_band(img, scale: int, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude spectrum of the (cropped) Y channel and the mask of frequencies above the LR Nyquist."""
    y, _ = _prepare(img, img, crop_border, True)
    y = y[..., 0] - y[..., 0].mean()
    amplitude = np.abs(np.fft.fft2(y))
    fy, fx = np.fft.fftfreq(y.shape[0]), np.fft.fftfreq(y.shape[1])
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return amplitude, radius > 0.5 / scale


def hf_spectrum_error(output, target, *, scale: int, crop_border: int = 0) -> float:
    """Mean |log(1 + |F(out)|) - log(1 + |F(gt)|)| over the frequencies a x`scale` model must invent
    (uint8-range RGB images (H, W, 3))."""
    a, band = _missing_band(output, scale, crop_border)
    b, _ = _missing_band(target, scale, crop_border)
    return float(np.abs(np.log1p(a[band]) - np.log1p(b[band])).mean())


def hf_energy_ratio(output, target, *, scale: int, crop_border: int = 0) -> float:
    """The output's energy above the LR Nyquist frequency over the ground truth's."""
    a, band = _missing_band(output, scale, crop_border)
    b, _ = _missing_band(target, scale, crop_border)
    return float((a[band] ** 2).sum() / max((b[band] ** 2).sum(), 1e-12))
