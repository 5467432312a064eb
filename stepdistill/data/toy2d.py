"""A 2-D Gaussian mixture with a closed-form score: an exact teacher for tests (edm2's toy example).

For x0 ~ sum_k pi_k N(mu_k, s^2 I) and x_t = alpha x0 + sigma eps, each component stays Gaussian,
x_t | k ~ N(alpha mu_k, v I) with v = alpha^2 s^2 + sigma^2, so

    p_t(x_t)        = sum_k pi_k N(x_t; alpha mu_k, v I)
    E[x0 | x_t, k]  = mu_k + (alpha s^2 / v) (x_t - alpha mu_k)
    E[x0 | x_t]     = sum_k r_k(x_t) E[x0 | x_t, k],   r_k = posterior responsibility.

`GaussianMixtureDenoiser` returns that posterior mean, i.e. the Bayes-optimal denoiser, with the
same call signature as `Denoiser`; `class_labels` selects one component (a conditional teacher) and
the label `num_components` means "unconditional" (classifier-free guidance's null label).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..schedules import NoiseSchedule


class GaussianMixture:
    """`num_components` equal-weight isotropic Gaussians with means on a circle of `radius`."""

    def __init__(self, num_components: int = 8, radius: float = 1.0, std: float = 0.1):
        self.num_components, self.std = num_components, std
        angles = torch.arange(num_components, dtype=torch.float64) * (2 * math.pi / num_components)
        self.means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            labels = torch.randint(0, self.num_components, (n,), generator=generator)
        x = self.means[labels] + self.std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x.float(), labels

    def _component_terms(self, x_t, alpha, sigma):
        """log pi_k N(x_t; alpha mu_k, v I) per component (B, K) and the variance v (B, 1)."""
        x = x_t.double()
        a, s = alpha.double().reshape(-1, 1), sigma.double().reshape(-1, 1)
        v = a**2 * self.std**2 + s**2  # (B, 1)
        diff = x[:, None, :] - a[:, :, None] * self.means.to(x.device)[None]  # (B, K, 2)
        logp = -0.5 * diff.pow(2).sum(-1) / v - torch.log(2 * math.pi * v) - math.log(self.num_components)
        return logp, v, diff

    def log_prob(self, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """log p_t(x_t), shape (B,)."""
        logp, _, _ = self._component_terms(x_t, alpha, sigma)
        return torch.logsumexp(logp, dim=1)

    def score(self, x_t, alpha, sigma) -> torch.Tensor:
        """grad log p_t(x_t) = sum_k r_k (-(x_t - alpha mu_k) / v)."""
        logp, v, diff = self._component_terms(x_t, alpha, sigma)
        r = torch.softmax(logp, dim=1)
        return (-(r[..., None] * diff).sum(1) / v).to(x_t.dtype)

    def posterior_mean(self, x_t, alpha, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        """E[x0 | x_t] (Tweedie), optionally conditioned on the component `labels` (B,)."""
        logp, v, diff = self._component_terms(x_t, alpha, sigma)
        if labels is not None:
            cond = labels < self.num_components  # the null label falls back to the mixture
            mask = torch.nn.functional.one_hot(labels.clamp(max=self.num_components - 1), self.num_components).bool()
            logp = torch.where(cond[:, None] & ~mask, torch.full_like(logp, -torch.inf), logp)
        r = torch.softmax(logp, dim=1)  # (B, K)
        a = alpha.double().reshape(-1, 1)
        means = self.means.to(x_t.device)[None]  # (1, K, 2)
        per_k = means + (a * self.std**2 / v)[..., None] * diff  # (B, K, 2)
        return (r[..., None] * per_k).sum(1).float()


class GaussianMixtureDenoiser(nn.Module):
    """The exact x0-denoiser of a `GaussianMixture` under `schedule`: `self(x_t, t, class_labels=None)`."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule

    def forward(self, x_t: torch.Tensor, t, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        return self.mixture.posterior_mean(x_t.float(), self.schedule.alpha(t), self.schedule.sigma(t), class_labels)
