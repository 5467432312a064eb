"""Two time-scale distillation on toy2d: an MLP generator against the exact mixture denoiser and an
online MLP fake score, with the generator update passed in. Shared by the distribution-matching tests.

The thresholds the tests use: sliced Wasserstein < 0.1 to 2,000 target samples (an untrained
generator scores ~0.6, two independent 2,000-sample draws of the target ~0.015) and every one of the
8 modes holding >= 6% of the samples.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDPMScheduler
from torch import nn

from stepdistill.data.toy2d import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.losses import denoising_loss
from stepdistill.metrics import sliced_wasserstein
from stepdistill.schedules import from_scheduler_config
from stepdistill.time_sampling import UniformTime

SCHEDULE, _ = from_scheduler_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))
MIXTURE = GaussianMixture()
SIGMA_DATA = 0.5  # EDM's sigma_data, for the EDM-weighted fake-score loss


def mlp(i, o, h=128):
    return nn.Sequential(nn.Linear(i, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(),
                         nn.Linear(h, o))


class ToyFakeScore(nn.Module):
    """x0(x_t, t) = MLP(x_t, log-SNR) + alpha x_t: a small online denoiser for 2-D data."""

    def __init__(self):
        super().__init__()
        self.f = mlp(3, 2)

    def forward(self, x_t, t):
        a, s = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
        log_snr = (2 * torch.log(a / s)).clamp(-20, 20)[:, None] / 10
        return self.f(torch.cat([x_t, log_snr], 1)) + a[:, None] * x_t


def snr_weight(t):
    """(alpha/sigma)^2: x0-MSE weighted to the epsilon-prediction loss (Ho et al. 2020)."""
    return (SCHEDULE.alpha(t) / SCHEDULE.sigma(t)) ** 2


def edm_weight(t):
    """(sigma^2 + sigma_d^2) / (sigma sigma_d)^2 with EDM's sigma = sigma_t/alpha_t (EDM Eq. 8, Table 1)."""
    s = SCHEDULE.sigma(t) / SCHEDULE.alpha(t)
    return (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2


@dataclass
class ToyResult:
    generator: nn.Module
    initial_generator: nn.Module  # a copy before training
    fake: nn.Module
    start: float  # sliced Wasserstein to the target before training
    end: float  # ... and after
    modes: torch.Tensor  # (8,) fraction of samples nearest each mixture mean
    samples: torch.Tensor


def mode_fractions(samples: torch.Tensor) -> torch.Tensor:
    return torch.cdist(samples.double(), MIXTURE.means).argmin(1).bincount(minlength=8).float() / len(samples)


def train_toy_generator(
    generator_loss_fn: Callable[[torch.Tensor, nn.Module, nn.Module], torch.Tensor],
    *,
    steps: int = 2500,
    ratio: int = 5,
    lr_g: float = 1e-3,
    lr_f: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    fake_times=UniformTime(),
    fake_weight: Callable[[torch.Tensor], torch.Tensor] = snr_weight,
    batch: int = 256,
    seed: int = 0,
) -> ToyResult:
    """Train `mlp(2, 2)` from N(0, I) noise: the fake score takes a denoising step on detached generator
    samples every step, the generator takes one step of `generator_loss_fn(x, real, fake)` every
    `ratio` steps (DMD2's two time-scale rule; ratio 1 is SiD's strict alternation), on fresh samples x
    that carry gradient. The fake score's parameters are frozen during the generator step, so a loss
    may backpropagate through its activations (SiD) without training it; that is asserted."""
    torch.manual_seed(seed)
    real = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
    gen, fake = mlp(2, 2), ToyFakeScore()
    initial = copy.deepcopy(gen)
    opt_g = torch.optim.Adam(gen.parameters(), lr_g, betas=betas)
    opt_f = torch.optim.Adam(fake.parameters(), lr_f, betas=betas)
    target, _ = MIXTURE.sample(2000, generator=torch.Generator().manual_seed(1))
    z_eval = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        start = sliced_wasserstein(gen(z_eval), target)
    for step in range(steps):
        with torch.no_grad():
            x = gen(torch.randn(batch, 2))
        t = fake_times.sample(SCHEDULE, batch)
        x_t = SCHEDULE.add_noise(x, torch.randn_like(x), t)
        loss = denoising_loss(fake(x_t, t), x, fake_weight(t))
        opt_f.zero_grad(set_to_none=True)
        loss.backward()
        opt_f.step()
        if step % ratio == 0:
            opt_f.zero_grad(set_to_none=True)
            fake.requires_grad_(False)
            opt_g.zero_grad()
            generator_loss_fn(gen(torch.randn(batch, 2)), real, fake).backward()
            fake.requires_grad_(True)
            assert all(p.grad is None for p in fake.parameters())  # the generator loss never trains the fake score
            opt_g.step()
    with torch.no_grad():
        samples = gen(z_eval)
    return ToyResult(gen, initial, fake, start, sliced_wasserstein(samples, target), mode_fractions(samples), samples)


def score_divergence(gen: nn.Module, *, steps: int = 500, batch: int = 256, seed: int = 3) -> float:
    """E over generated x_t of ||x0_real(x_t) - x0_fake(x_t)||^2, with a fake score re-fitted from scratch
    to the generator's samples: the Fisher divergence between the noised generator and target
    distributions in x0 units (times sigma_t^4 / alpha_t^2), up to the re-fit's own error."""
    from stepdistill.time_sampling import DiscreteRange

    g = torch.Generator().manual_seed(seed)
    real, fake = GaussianMixtureDenoiser(MIXTURE, SCHEDULE), ToyFakeScore()
    opt = torch.optim.Adam(fake.parameters(), 1e-3)
    with torch.no_grad():
        xs = gen(torch.randn(steps * batch // 4, 2, generator=g))
    for _ in range(steps):
        x = xs[torch.randint(0, len(xs), (batch,), generator=g)]
        t = UniformTime().sample(SCHEDULE, batch, generator=g)
        x_t = SCHEDULE.add_noise(x, torch.randn(x.shape, generator=g), t)
        loss = denoising_loss(fake(x_t, t), x, snr_weight(t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x = gen(torch.randn(4096, 2, generator=g))
        t = DiscreteRange(0.02, 0.98).sample(SCHEDULE, 4096, generator=g)
        x_t = SCHEDULE.add_noise(x, torch.randn(x.shape, generator=g), t)
        return float((real(x_t, t) - fake(x_t, t)).square().sum(1).mean())
