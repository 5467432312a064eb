"""Tests for stepdistill.data.toy2d: the closed-form Gaussian-mixture teacher and its denoiser."""

from __future__ import annotations

import math

import pytest
import torch

from stepdistill.data.toy2d import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.schedules import EDM, RectifiedFlow, VPDiscrete, from_scheduler_config

K = 8


@pytest.fixture(scope="module")
def mixture() -> GaussianMixture:
    return GaussianMixture(num_components=K, radius=1.0, std=0.1)


@pytest.fixture(scope="module")
def vp() -> VPDiscrete:
    schedule, prediction = from_scheduler_config(
        {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"})
    assert isinstance(schedule, VPDiscrete) and prediction == "epsilon"
    return schedule


def _vp_abar(vp: VPDiscrete) -> torch.Tensor:
    """alphas_cumprod recovered from the log-SNR table (sigmoid(lambda) = abar)."""
    return torch.sigmoid(vp.log_snr)


def _noisy(mixture, alpha: float, sigma: float, n: int = 64, seed: int = 0) -> torch.Tensor:
    """x_t = alpha x0 + sigma eps in float64, plus a few points far from the data."""
    g = torch.Generator().manual_seed(seed)
    x0, _ = mixture.sample(n, generator=g)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x_t = alpha * x0.double() + sigma * eps
    far = torch.tensor([[0.0, 0.0], [3.0, -2.0], [-0.5 * alpha, 0.1]], dtype=torch.float64)
    return torch.cat([x_t, far])


def _pairs(vp) -> list[tuple[str, float, float]]:
    abar = _vp_abar(vp)
    pairs = []
    for t in (0, 100, 500, 900, 999):  # VP: alpha^2 + sigma^2 = 1
        a = float(abar[t].sqrt())
        pairs.append((f"vp{t}", a, math.sqrt(1 - a * a)))
    for s in (0.01, 1.0, 80.0):  # EDM: alpha = 1, sigma = t
        pairs.append((f"edm{s}", 1.0, s))
    for t in (0.001, 0.3, 0.7, 0.999):  # flow: alpha = 1 - t, sigma = t
        pairs.append((f"flow{t}", 1 - t, t))
    return pairs


# ----------------------------------------------------------------------------
# closed-form score and Tweedie


def test_score_matches_autograd_of_log_prob(mixture, vp):
    for name, a, s in _pairs(vp):
        x = _noisy(mixture, a, s).requires_grad_(True)
        alpha = torch.full((len(x),), a, dtype=torch.float64)
        sigma = torch.full((len(x),), s, dtype=torch.float64)
        logp = mixture.log_prob(x, alpha, sigma)
        assert logp.shape == (len(x),) and logp.dtype == torch.float64
        (grad,) = torch.autograd.grad(logp.sum(), x)
        score = mixture.score(x.detach(), alpha, sigma)
        assert score.dtype == torch.float64 and score.shape == x.shape
        scale = grad.abs().max().clamp(min=1.0)
        torch.testing.assert_close(score, grad, rtol=0, atol=1e-6 * float(scale), msg=name)


def test_score_scalar_alpha_sigma_broadcast(mixture):
    x = _noisy(mixture, 0.6, 0.8)
    batched = mixture.score(x, torch.full((len(x),), 0.6, dtype=torch.float64),
                            torch.full((len(x),), 0.8, dtype=torch.float64))
    scalar = mixture.score(x, torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64))
    torch.testing.assert_close(scalar, batched, rtol=1e-12, atol=1e-12)


def test_log_prob_normalised(mixture):
    a, s = 0.8, 0.6
    h = 0.02
    ax = torch.arange(-4.0, 4.0, h, dtype=torch.float64) + h / 2
    grid = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    p = mixture.log_prob(grid, torch.tensor(a, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)).exp()
    assert abs(float(p.sum()) * h * h - 1) < 1e-4


def test_posterior_mean_is_tweedie(mixture, vp):
    for name, a, s in _pairs(vp):
        x = _noisy(mixture, a, s)
        alpha = torch.full((len(x),), a, dtype=torch.float64)
        sigma = torch.full((len(x),), s, dtype=torch.float64)
        tweedie = (x + s**2 * mixture.score(x, alpha, sigma)) / a
        pm = mixture.posterior_mean(x, alpha, sigma)
        assert pm.shape == x.shape
        # posterior_mean returns float32, hence the float32-level tolerance
        torch.testing.assert_close(pm.double(), tweedie, rtol=1e-6, atol=1e-6, msg=name)


# ----------------------------------------------------------------------------
# GaussianMixtureDenoiser under each schedule, at native times


def _schedules(vp):
    return {
        "vp": (vp, [0.0, 10.5, 250.0, 700.0, 999.0]),
        "edm": (EDM(), [0.002, 0.05, 1.0, 10.0, 80.0]),
        "flow": (RectifiedFlow(), [0.0, 0.001, 0.4, 0.9, 1.0]),
    }


def _alpha_sigma_reference(kind: str, schedule, t: float) -> tuple[float, float]:
    """alpha, sigma at native time t, computed independently of the schedule's own methods."""
    if kind == "vp":
        lam = torch.log(_vp_abar(schedule)).sub(torch.log1p(-_vp_abar(schedule)))
        lo = min(int(math.floor(t)), len(lam) - 2)
        lam_t = float(lam[lo] + (t - lo) * (lam[lo + 1] - lam[lo]))
        return math.sqrt(1 / (1 + math.exp(-lam_t))), math.sqrt(1 / (1 + math.exp(lam_t)))
    if kind == "edm":
        return 1.0, t
    return 1.0 - t, t


@pytest.mark.parametrize("kind", ["vp", "edm", "flow"])
def test_denoiser_returns_posterior_mean_at_native_times(mixture, vp, kind):
    schedule, times = _schedules(vp)[kind]
    den = GaussianMixtureDenoiser(mixture, schedule)
    for t in times:
        a, s = _alpha_sigma_reference(kind, schedule, t)
        x = _noisy(mixture, a, s, seed=1).float()
        n = len(x)
        expected = mixture.posterior_mean(x.double(), torch.full((n,), a, dtype=torch.float64),
                                          torch.full((n,), s, dtype=torch.float64))
        for t_arg in (t, torch.tensor(t), torch.full((n,), t)):  # python scalar, 0-d, per-sample
            out = den(x, t_arg)
            assert out.shape == x.shape and out.dtype == torch.float32
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4, msg=f"{kind} t={t}")
    # per-sample times mixing all noise levels in one batch
    x = _noisy(mixture, 0.5, 0.5, n=len(times) * 4, seed=2)[: len(times) * 4].float()
    t_batch = torch.tensor(times).repeat_interleave(4)
    out = den(x, t_batch)
    for i, t in enumerate(times):
        sl = slice(4 * i, 4 * i + 4)
        torch.testing.assert_close(out[sl], den(x[sl], t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["vp", "edm", "flow"])
def test_denoiser_low_noise_returns_noisy_point(mixture, vp, kind):
    schedule, times = _schedules(vp)[kind]
    t = times[0] if kind != "flow" else times[1]  # least noisy real level (VP index 0, sigma_min, t=1e-3)
    a, s = _alpha_sigma_reference(kind, schedule, t)
    assert s < 0.01
    g = torch.Generator().manual_seed(3)
    x0, _ = mixture.sample(256, generator=g)
    x_t = a * x0 + s * torch.randn(256, 2, generator=g)
    out = GaussianMixtureDenoiser(mixture, schedule)(x_t, t)
    # E[x0|x_t] - x_t/alpha = (sigma^2/v)(mu_k - x_t/alpha): <= ~4e-3 * 0.4 at VP index 0
    torch.testing.assert_close(out, x_t / a, rtol=0, atol=3e-3)
    torch.testing.assert_close(out, x0, rtol=0, atol=0.03)


@pytest.mark.parametrize("kind", ["vp", "edm", "flow"])
def test_denoiser_high_noise_returns_mixture_mean(mixture, vp, kind):
    schedule, times = _schedules(vp)[kind]
    t = times[-1]  # VP index 999, sigma_max = 80, flow t = 1
    a, s = _alpha_sigma_reference(kind, schedule, t)
    assert torch.allclose(mixture.means.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    g = torch.Generator().manual_seed(4)
    x0, _ = mixture.sample(256, generator=g)
    x_t = a * x0 + s * torch.randn(256, 2, generator=g)
    out = GaussianMixtureDenoiser(mixture, schedule)(x_t, t)
    # For EDM sigma=80 the responsibilities are tilted by ~x_t.mu_k / sigma^2, so the output is
    # ~x_t / (2 sigma^2) (|x_t| <~ 300 -> <~ 0.025); VP index 999 (alpha ~ 5e-5) and flow t=1 give ~0.
    tol = 0.05 if kind == "edm" else 1e-3
    assert float(out.norm(dim=1).max()) < tol
    if kind == "edm":
        torch.testing.assert_close(out, x_t / (2 * s**2), rtol=0, atol=2e-3)


@pytest.mark.parametrize("kind", ["vp", "edm", "flow"])
def test_denoiser_class_conditional(mixture, vp, kind):
    schedule, times = _schedules(vp)[kind]
    den = GaussianMixtureDenoiser(mixture, schedule)
    t = times[-1]
    a, s = _alpha_sigma_reference(kind, schedule, t)
    g = torch.Generator().manual_seed(5)
    x0, _ = mixture.sample(64, generator=g)
    x_t = a * x0 + s * torch.randn(64, 2, generator=g)
    uncond = den(x_t, t)
    for k in range(K):
        out = den(x_t, t, class_labels=torch.full((64,), k, dtype=torch.long))
        torch.testing.assert_close(out, mixture.means[k].float().expand(64, 2), rtol=0, atol=1e-3)
    # the null label K is the unconditional teacher
    torch.testing.assert_close(den(x_t, t, class_labels=torch.full((64,), K, dtype=torch.long)), uncond,
                               rtol=0, atol=0)
    # mixed labels in one batch, including null ones, at a middle noise level
    t_mid = times[2]
    labels = torch.arange(64) % (K + 1)
    out = den(x_t, t_mid, class_labels=labels)
    for k in range(K + 1):
        sel = labels == k
        ref = den(x_t[sel], t_mid, class_labels=None if k == K else torch.full((int(sel.sum()),), k))
        torch.testing.assert_close(out[sel], ref, rtol=1e-6, atol=1e-6)


def test_conditional_posterior_mean_is_component_posterior(mixture):
    """With a label, the posterior mean is mu_k + (alpha s^2 / v)(x_t - alpha mu_k)."""
    a, s = 0.7, 0.5
    x = _noisy(mixture, a, s, seed=6)
    n = len(x)
    alpha = torch.full((n,), a, dtype=torch.float64)
    sigma = torch.full((n,), s, dtype=torch.float64)
    v = a**2 * mixture.std**2 + s**2
    for k in (0, 3, K - 1):
        mu = mixture.means[k]
        expected = mu + (a * mixture.std**2 / v) * (x - a * mu)
        got = mixture.posterior_mean(x, alpha, sigma, labels=torch.full((n,), k))
        torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------
# sampling


def test_sample_statistics(mixture):
    g = torch.Generator().manual_seed(7)
    x, labels = mixture.sample(4000, generator=g)
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert labels.shape == (4000,) and int(labels.min()) >= 0 and int(labels.max()) < K
    counts = torch.bincount(labels, minlength=K)
    assert int(counts.min()) > 400  # roughly uniform over the 8 components
    radii = x.double().norm(dim=1)
    assert abs(float(radii.mean()) - 1.0) < 0.02 and float((radii - 1).abs().max()) < 0.6
    for k in range(K):
        xs = x[labels == k].double()
        assert torch.allclose(mixture.means[k].norm(), torch.tensor(1.0, dtype=torch.float64))
        assert float((xs.mean(0) - mixture.means[k]).abs().max()) < 0.02
        std = xs.std(0)
        assert float((std - 0.1).abs().max()) < 0.015
    resid = x.double() - mixture.means[labels]
    assert abs(float(resid.std()) - 0.1) < 0.005


def test_sample_with_labels_and_determinism(mixture):
    labels = torch.full((4000,), 5, dtype=torch.long)
    x, out_labels = mixture.sample(4000, generator=torch.Generator().manual_seed(8), labels=labels)
    assert torch.equal(out_labels, labels)
    assert float((x.double().mean(0) - mixture.means[5]).abs().max()) < 0.02
    a, _ = mixture.sample(16, generator=torch.Generator().manual_seed(9))
    b, _ = mixture.sample(16, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
