"""Samplers written against the x0-denoiser interface, so they serve every schedule and network.

Teacher baselines integrate the probability-flow ODE over a `time_grid` (native times from t_max down
to 0). Every step uses only x0 = D(x_t, t) and the schedule's alpha, sigma:

- `ddim` (Song et al. 2021, Eq. 12 with eta = 0): x_s = alpha_s x0 + sigma_s eps_hat. It is exactly
  Karras et al.'s Euler step in the variables (x / alpha, sigma / alpha), so "euler" is an alias.
- `heun`: second-order trapezoidal rule (EDM Algorithm 1) on the data-prediction form
  d(x / sigma) / d(alpha / sigma) = x0, which stays finite when the first step starts at alpha = 0
  (rectified flow at t = 1); the last step into t = 0 is a first-order step, as in EDM.
- `dpmpp_2m` (Lu et al. 2022, DPM-Solver++(2M), Algorithm 2), first order on the first and last step.
- `tcd` (Zheng et al. 2024, trajectory consistency distillation's strategic stochastic sampling): between
  the two above, gamma = 0 a DDIM step along the student's trajectory, gamma = 1 the consistency re-noising.

Students use `one_step` and `multistep` (consistency-style: denoise, then re-noise with fresh noise; one
`renoise_chain` serves multistep sampling and DMD2's backward simulation). `ddim_step` / `heun_step` take a
time per sample, as consistency distillation's teacher solver needs; the grid samplers delegate to them.
Every sampler takes `denoise(x_t, t) -> x0`, e.g. `functools.partial(denoiser, class_labels=y)`.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch

from .schedules import NoiseSchedule, time_grid

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["coefficients", "ddim_step", "heun_step", "ddim", "euler", "heun", "dpmpp_2m", "SAMPLERS", "SamplerName",
           "sample", "nfe_of", "steps_for_nfe", "one_step", "multistep", "renoise_chain", "prior_noise",
           "backward_simulation", "tcd_step", "tcd"]


def _coeffs(schedule: NoiseSchedule, t: torch.Tensor) -> tuple[float, float]:
    """(alpha, sigma) at a grid point; t = 0 is what the schedule says it is (`NoiseSchedule.zero`: clean data by
    default, as diffusers' `set_alpha_to_one`; VP-discrete index 0 still holds a little noise)."""
    if float(t) == 0.0 and schedule.zero == "clean":
        return 1.0, 0.0
    t = t.reshape(1).to(torch.float64)
    return float(schedule.alpha(t)), float(schedule.sigma(t))


def _denoise(denoise: DenoiseFn, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return denoise(x, t.to(torch.float32).expand(x.shape[0]).to(x.device))


def coefficients(schedule: NoiseSchedule, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (alpha, sigma) at native times t (B,), computed in float64, returned in float32;
    t = 0 is what the schedule says (`NoiseSchedule.zero`), as in `_coeffs`."""
    t64 = t.to(torch.float64)
    clean = (t64 == 0) & (schedule.zero == "clean")
    alpha = torch.where(clean, torch.ones_like(t64), schedule.alpha(t64))
    sigma = torch.where(clean, torch.zeros_like(t64), schedule.sigma(t64))
    return alpha.float(), sigma.float()


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device).view(-1, *[1] * (x.ndim - 1))


def ddim_step(denoise: DenoiseFn, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
              x0: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM (= Euler) step of the probability-flow ODE from time t to s, a time per sample (t, s: (B,)):
    x0 = D(x, t) (or the given x0), eps = (x - alpha_t x0) / sigma_t, x_s = alpha_s x0 + sigma_s eps.
    Consistency distillation's teacher solver (LCM's `DDIMSolver`) and the grid sampler `ddim` use it."""
    a_t, s_t = (_per_sample(c, x) for c in coefficients(schedule, t))
    a_s, s_s = (_per_sample(c, x) for c in coefficients(schedule, s))
    if x0 is None:
        x0 = denoise(x, t.to(torch.float32).to(x.device))
    eps = (x - a_t * x0) / s_t
    return a_s * x0 + s_s * eps


def heun_step(denoise: DenoiseFn, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor,
              x0: torch.Tensor | None = None) -> torch.Tensor:
    """One Heun step (EDM Algorithm 1, trapezoid on d(x / sigma) / d(alpha / sigma) = x0) from t to s per
    sample; two evaluations, or one where s = 0 (then x0 is returned, as EDM's last step). Consistency
    distillation's teacher solver on EDM teachers (the official CD code) and the grid sampler `heun`."""
    a_t, s_t = coefficients(schedule, t)
    a_s, s_s = coefficients(schedule, s)
    if x0 is None:
        x0 = denoise(x, t.to(torch.float32).to(x.device))
    final = _per_sample(s_s == 0, x)
    # z = x / sigma, rho = alpha / sigma: dz / drho = x0. Euler predictor, trapezoid corrector.
    s_s_safe = torch.where(s_s == 0, torch.ones_like(s_s), s_s)
    h = (a_s.double() / s_s_safe.double() - a_t.double() / s_t.double()).float()
    z, h, s_s_b = x / _per_sample(s_t, x), _per_sample(h, x), _per_sample(s_s_safe, x)
    x_pred = s_s_b * (z + h * x0)
    if bool(final.all()):
        return x0
    x0_pred = denoise(x_pred, s.to(torch.float32).to(x.device))
    return torch.where(final, x0, s_s_b * (z + h * 0.5 * (x0 + x0_pred)))


def _grid(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(1).expand(x.shape[0])


@torch.no_grad()
def ddim(denoise: DenoiseFn, x: torch.Tensor, schedule: NoiseSchedule, ts: torch.Tensor) -> torch.Tensor:
    for t, s in zip(ts[:-1], ts[1:]):
        x = ddim_step(denoise, schedule, x, _grid(t, x), _grid(s, x))
    return x


euler = ddim


@torch.no_grad()
def heun(denoise: DenoiseFn, x: torch.Tensor, schedule: NoiseSchedule, ts: torch.Tensor) -> torch.Tensor:
    for t, s in zip(ts[:-1], ts[1:]):
        x = heun_step(denoise, schedule, x, _grid(t, x), _grid(s, x))
    return x


@torch.no_grad()
def dpmpp_2m(denoise: DenoiseFn, x: torch.Tensor, schedule: NoiseSchedule, ts: torch.Tensor) -> torch.Tensor:
    x0_prev, h_prev = None, None
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        a_t, s_t = _coeffs(schedule, t)
        a_s, s_s = _coeffs(schedule, s)
        x0 = _denoise(denoise, x, t)
        if s_s == 0:
            return x0
        lam_t = math.log(a_t / s_t) if a_t > 0 else -math.inf
        h = math.log(a_s / s_s) - lam_t
        d = x0
        if x0_prev is not None and math.isfinite(h_prev):
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D   (DPM-Solver++ Eq. 9 / Alg. 2)
        x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


SAMPLERS = {"ddim": ddim, "euler": euler, "heun": heun, "dpmpp_2m": dpmpp_2m}
SamplerName = Literal["ddim", "euler", "heun", "dpmpp_2m"]  # the keys of SAMPLERS, for typed configs


def nfe_of(sampler: str, steps: int) -> int:
    """Network evaluations of `steps` intervals (Heun's last step is first order)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """The most steps whose cost does not exceed `nfe` evaluations."""
    return max(1, (nfe + 1) // 2) if sampler == "heun" else max(1, nfe)


def prior_noise(schedule: NoiseSchedule, shape, *, generator: torch.Generator | None = None,
                device="cpu") -> torch.Tensor:
    """Pure noise at t_max: unit Gaussian times the prior's standard deviation."""
    return schedule.prior_std() * torch.randn(shape, generator=generator, device=device)


def sample(denoise: DenoiseFn, schedule: NoiseSchedule, noise: torch.Tensor, *, sampler: str = "dpmpp_2m",
           steps: int = 25, spacing: str = "karras") -> torch.Tensor:
    """Integrate from `noise` (already scaled by `prior_noise`) to data in `steps` intervals."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {sorted(SAMPLERS)}")
    ts = time_grid(schedule, steps, spacing)
    return SAMPLERS[sampler](denoise, noise, schedule, ts)


# ----------------------------------------------------------------------------
# Students.

@torch.no_grad()
def one_step(generator: Callable[..., torch.Tensor], z: torch.Tensor, **cond) -> torch.Tensor:
    """x = G(z): a generator already bound to its input time (see `roles.Generator`)."""
    return generator(z, **cond)


NoiseFn = Callable[[torch.Size], torch.Tensor]  # shape -> fresh unit Gaussian noise


def renoise_chain(denoise: DenoiseFn, schedule: NoiseSchedule, x: torch.Tensor, ts: torch.Tensor, steps: int,
                  noise: NoiseFn) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`steps` rounds of x0 = D(x, t_i), then x = alpha(t_{i+1}) x0 + sigma(t_{i+1}) eps with fresh eps =
    noise(shape); returns (x, the last x0). A round whose next time is past the end or 0 returns x0 as x.
    Consistency models' multistep sampler (Song et al. 2023, Algorithm 1), few-step students' sampling
    and DMD2's backward simulation are all this chain."""
    x0 = None
    for i in range(steps):
        x0 = _denoise(denoise, x, ts[i])
        if i + 1 == len(ts) or float(ts[i + 1]) == 0:
            return x0, x0
        a_s, s_s = _coeffs(schedule, ts[i + 1])
        x = a_s * x0 + s_s * noise(x0.shape)
    return x, x0


def _gaussian(generator: torch.Generator | None, device: torch.device) -> NoiseFn:
    return lambda shape: torch.randn(shape, generator=generator, device=device)


@torch.no_grad()
def multistep(denoise: DenoiseFn, schedule: NoiseSchedule, noise: torch.Tensor, ts: torch.Tensor, *,
              generator: torch.Generator | None = None, renoise: NoiseFn | None = None) -> torch.Tensor:
    """Consistency / DMD2 multistep sampling from `noise` (already at ts[0]'s scale): x0 = D(x_t, t_i), then
    re-noise to t_{i+1} with fresh noise from `generator` (or `renoise(shape)`). `ts` descends and may end
    at 0 (then the last x0 is returned)."""
    return renoise_chain(denoise, schedule, noise, ts, len(ts), renoise or _gaussian(generator, noise.device))[1]


@torch.no_grad()
def backward_simulation(denoise: DenoiseFn, schedule: NoiseSchedule, noise: torch.Tensor, ts: torch.Tensor,
                        k: int, *, renoise: list[torch.Tensor] | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The input a multistep generator sees at its k-th time: run it k steps from pure noise with
    re-noising (DMD2 Sec. 4.5, "backward simulation"), so training matches inference instead of
    noising real data. Returns x at ts[k] (k = 0: the noise itself). `renoise` supplies the k fresh
    noises (else they are drawn from `generator`)."""
    given = iter(renoise) if renoise is not None else None
    draw = (lambda shape: next(given)) if given is not None else _gaussian(generator, noise.device)
    return renoise_chain(denoise, schedule, noise, ts, k, draw)[0]


def tcd_step(denoise: DenoiseFn, schedule: NoiseSchedule, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
             gamma: float, noise: torch.Tensor | None) -> torch.Tensor:
    """One step of TCD's sampler (diffusers `TCDScheduler.step`) from t to t_next (scalars): x0 and eps_hat
    at t, a DDIM step back to s = (1 - gamma) t_next (floored to a training index on VP-discrete schedules),
    x_s = alpha_s x0 + sigma_s eps_hat, then forward noise from s up to t_next:
    x = (alpha_next / alpha_s) x_s + sqrt(sigma_next^2 - (alpha_next sigma_s / alpha_s)^2) z.
    `noise` None (or gamma = 0): x_s itself at t_next = s. s = 0 is clean data, as everywhere here (diffusers'
    TCD takes training index 0 there), so gamma = 1 is exactly the consistency re-noising."""
    from .schedules import VPDiscrete

    s = (1 - gamma) * t_next.to(torch.float64)
    s = s.floor() if isinstance(schedule, VPDiscrete) else s
    x_s = ddim_step(denoise, schedule, x, t.reshape(1).expand(x.shape[0]), s.reshape(1).expand(x.shape[0]))
    if gamma == 0 or noise is None:
        return x_s
    a_s, s_s = _coeffs(schedule, s)
    a_n, s_n = _coeffs(schedule, t_next)
    ratio = a_n / a_s
    return ratio * x_s + math.sqrt(max(s_n ** 2 - (ratio * s_s) ** 2, 0.0)) * noise


@torch.no_grad()
def tcd(denoise: DenoiseFn, schedule: NoiseSchedule, noise: torch.Tensor, ts: torch.Tensor, *, gamma: float = 0.3,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """TCD sampling over the student's times `ts` (descending, without the final 0): each step to the next
    time with `tcd_step` and fresh noise, the last one to clean data (x0 of the last time's DDIM step at
    s = 0). gamma = 0.3 is TCD's default."""
    draw = _gaussian(generator, noise.device)
    x = noise
    for i in range(len(ts)):
        last = i + 1 == len(ts)
        t_next = torch.zeros((), dtype=torch.float64) if last else ts[i + 1].to(torch.float64)
        x = tcd_step(denoise, schedule, x, ts[i], t_next, gamma, None if last else draw(x.shape))
    return x
