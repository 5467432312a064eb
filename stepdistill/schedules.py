"""Noise schedules: the forward process x_t = alpha(t) * x0 + sigma(t) * eps.

Every schedule works in its own *native* time, the variable its papers and diffusers configs use:

| schedule     | native t                      | alpha(t)          | sigma(t)           | network input    |
|--------------|-------------------------------|-------------------|--------------------|------------------|
| `VPDiscrete` | training index in [0, T - 1]  | sqrt(abar_t)      | sqrt(1 - abar_t)   | t                |
| `EDM`        | sigma in [sigma_min, sigma_max] | 1               | t                  | log(t) / 4       |
| `RectifiedFlow` | t in [0, 1]                | 1 - t             | t                  | t * T            |

Fractional VP times interpolate log-SNR linearly between training indices (k-diffusion's
`DiscreteSchedule` does the same in log-sigma). Larger t is always noisier.

What t = 0 means to the samplers and solvers is defined here, once (`NoiseSchedule.zero`): clean data (alpha 1,
sigma 0) by default, for every schedule. A VP-discrete schedule may instead mean its lowest training level,
index 0 with sqrt(abar_0) and sqrt(1 - abar_0) (`at_zero("lowest_level")`): where LCM's `DDIMSolver` and
diffusers' `TCDScheduler` step to (their `alphas_cumprod[0]`; diffusers' `set_alpha_to_one=False`).
For EDM, t = 0 is only used as the end point of a sampling grid.

`from_scheduler_config` builds the schedule and the network's prediction type from any diffusers
scheduler config, so one teacher folder tells the whole toolkit how to read its network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

__all__ = [
    "NoiseSchedule",
    "VPDiscrete",
    "EDM",
    "RectifiedFlow",
    "from_scheduler_config",
    "karras_sigmas",
    "time_grid",
]


class NoiseSchedule:
    """alpha(t), sigma(t) and the network's timestep input for native time t (any-shape tensors)."""

    t_min: float  # least noisy time used for training/sampling (> 0)
    t_max: float  # noisiest time; the prior lives here
    zero: str = "clean"  # what t = 0 means (module docstring): "clean" data, or the "lowest_level" (VP-discrete)

    def at_zero(self, meaning: str) -> "NoiseSchedule":
        """This schedule with t = 0 meaning `meaning` ("clean" or, VP-discrete only, "lowest_level")."""
        import copy

        if meaning not in ("clean", "lowest_level"):
            raise ValueError(f"t = 0 means 'clean' or 'lowest_level', not {meaning!r}")
        if meaning == "lowest_level" and not isinstance(self, VPDiscrete):
            raise ValueError(f"only a VP-discrete schedule has a lowest training level; {type(self).__name__} "
                             "reaches clean data at t = 0")
        other = copy.copy(self)
        other.zero = meaning
        return other

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The conditioning value the network was trained with (c_noise in EDM's notation)."""
        raise NotImplementedError

    def c_in(self, t: torch.Tensor) -> torch.Tensor:
        """Input scaling applied to x_t before the network (EDM's c_in; 1 elsewhere)."""
        return torch.ones_like(t)

    def t_from_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """Inverse of sigma(t) / alpha(t) (EDM's sigma for a VP or flow schedule)."""
        raise NotImplementedError

    def ratio(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma(t) / self.alpha(t)

    def prior_std(self) -> float:
        """Standard deviation of x_{t_max} for unit-variance data: what pure noise is scaled by."""
        t = torch.tensor(self.t_max, dtype=torch.float64)
        return float(torch.sqrt(self.alpha(t) ** 2 + self.sigma(t) ** 2))

    def add_noise(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) eps, with t of shape (B,) broadcast over the rest."""
        alpha, sigma = self.alpha(t), self.sigma(t)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return alpha.view(shape).to(x0.dtype) * x0 + sigma.view(shape).to(x0.dtype) * eps


# ----------------------------------------------------------------------------
# Variance-preserving discrete schedule (DDPM, SD, ...): alpha^2 + sigma^2 = 1.

class VPDiscrete(NoiseSchedule):
    def __init__(self, alphas_cumprod: torch.Tensor):
        abar = alphas_cumprod.to(torch.float64)
        if abar.ndim != 1 or abar.numel() < 2 or not bool(((abar >= 0) & (abar <= 1)).all()):
            raise ValueError("alphas_cumprod must be a 1-D tensor with values in [0, 1]")
        # Zero-terminal-SNR configs put abar_T at exactly 0; keep log-SNR finite there.
        abar = abar.clamp(min=1e-12, max=1 - 1e-12)
        self.log_snr = torch.log(abar) - torch.log1p(-abar)  # lambda_t, decreasing in t
        self.num_train_timesteps = abar.numel()
        self.t_min, self.t_max = 0.0, float(abar.numel() - 1)

    def _lambda(self, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(torch.float64).clamp(self.t_min, self.t_max)
        lo = tt.floor().long().clamp(max=self.num_train_timesteps - 2)
        w = tt - lo
        table = self.log_snr.to(tt.device)
        return torch.lerp(table[lo], table[lo + 1], w)

    def alpha(self, t):
        return torch.sigmoid(self._lambda(t)).sqrt().to(_float(t))

    def sigma(self, t):
        return torch.sigmoid(-self._lambda(t)).sqrt().to(_float(t))

    def timestep(self, t):
        return t

    def t_from_ratio(self, ratio):
        # sigma/alpha = exp(-lambda/2)  =>  lambda = -2 log(ratio); invert the monotone table.
        lam = (-2.0 * torch.log(ratio.to(torch.float64))).clamp(self.log_snr[-1], self.log_snr[0])
        neg = -self.log_snr.to(lam.device)  # increasing
        hi = torch.searchsorted(neg, -lam.contiguous()).clamp(1, self.num_train_timesteps - 1)
        lo = hi - 1
        w = (-lam - neg[lo]) / (neg[hi] - neg[lo])
        return (lo + w).to(_float(ratio))


# ----------------------------------------------------------------------------
# EDM (Karras et al. 2022), Table 1: alpha = 1, sigma = t, c_in = 1/sqrt(sigma^2 + sigma_data^2),
# c_noise = log(sigma) / 4.

@dataclass
class EDM(NoiseSchedule):
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    sigma_data: float = 0.5
    rho: float = 7.0

    @property
    def t_min(self):
        return self.sigma_min

    @property
    def t_max(self):
        return self.sigma_max

    def alpha(self, t):
        return torch.ones_like(t, dtype=_float(t))

    def sigma(self, t):
        return t.to(_float(t))

    def timestep(self, t):
        return torch.log(t.to(_float(t))) / 4

    def c_in(self, t):
        return 1 / torch.sqrt(t.to(_float(t)) ** 2 + self.sigma_data**2)

    def t_from_ratio(self, ratio):
        return ratio


# ----------------------------------------------------------------------------
# Rectified flow (diffusers FlowMatch*): x_t = (1 - t) x0 + t eps; `shift` warps sampling grids and
# training times toward noise, t' = shift t / (1 + (shift - 1) t) (SD3, Eq. 23).

@dataclass
class RectifiedFlow(NoiseSchedule):
    shift: float = 1.0
    num_train_timesteps: int = 1000
    t_min: float = 1e-3
    t_max: float = 1.0

    def alpha(self, t):
        return (1 - t).to(_float(t))

    def sigma(self, t):
        return t.to(_float(t))

    def timestep(self, t):
        return t * self.num_train_timesteps

    def t_from_ratio(self, ratio):
        return ratio / (1 + ratio)

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)


def _float(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


# ----------------------------------------------------------------------------
# diffusers scheduler configs -> (schedule, prediction type).

def from_scheduler_config(config: Mapping[str, Any] | Any) -> tuple[NoiseSchedule, str]:
    """Read a diffusers scheduler (or its config dict) into a schedule and a prediction type.

    Prediction types: "epsilon", "v_prediction", "sample" (VP / any), "flow" (FlowMatch velocity
    eps - x0) and "edm" (EDM's preconditioned F, diffusers' EDM schedulers with epsilon).
    """
    import diffusers

    if hasattr(config, "config"):  # a scheduler instance
        config = {**config.config, "_class_name": type(config).__name__}
    config = dict(config)
    name = config.get("_class_name") or _infer_class_name(config)
    if name.startswith("FlowMatch"):
        return RectifiedFlow(shift=flow_shift(config), num_train_timesteps=int(config.get("num_train_timesteps", 1000))), "flow"
    if name.startswith("EDM"):
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"{name} with prediction_type={config.get('prediction_type')!r} is not supported")
        return EDM(sigma_min=config.get("sigma_min", 0.002), sigma_max=config.get("sigma_max", 80.0),
                   sigma_data=config.get("sigma_data", 0.5), rho=config.get("rho", 7.0)), "edm"
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"scheduler {name}: unknown prediction_type {prediction_type!r}; "
                         "expected 'epsilon', 'v_prediction' or 'sample'")
    # DDPMScheduler owns every beta_schedule variant (incl. rescale_betas_zero_snr); reuse it.
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "rescale_betas_zero_snr")
    ddpm = diffusers.DDPMScheduler(**{k: config[k] for k in keys if k in config and config[k] is not None})
    return VPDiscrete(ddpm.alphas_cumprod), prediction_type


def flow_shift(config: Mapping[str, Any], image_tokens: int | None = None) -> float:
    """A FlowMatch scheduler's shift: its fixed `shift`, or with `use_dynamic_shifting` (Flux) exp(mu), mu
    linear in the image's token count as FluxPipeline computes it (`image_tokens` None: the largest,
    `max_image_seq_len`, the model's native resolution)."""
    if not config.get("use_dynamic_shifting"):
        return float(config.get("shift", 1.0))
    if config.get("time_shift_type", "exponential") != "exponential":
        raise ValueError("FlowMatch dynamic shifting with time_shift_type='linear' is not supported")
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base, top = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    tokens = hi if image_tokens is None else image_tokens
    mu = base + (top - base) / (hi - lo) * (tokens - lo)  # diffusers' calculate_shift
    return math.exp(mu)


def _infer_class_name(config: dict) -> str:
    """A scheduler instance's `.config` carries no class name; its keys tell the families apart."""
    if "sigma_data" in config:
        return "EDMEulerScheduler"
    if "shift" in config and "beta_schedule" not in config:
        return "FlowMatchEulerDiscreteScheduler"
    return "DDPMScheduler"


# ----------------------------------------------------------------------------
# Sampling grids.

def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min, spaced as in EDM Eq. 5."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_max + ramp * (inv_min - inv_max)) ** rho


def time_grid(schedule: NoiseSchedule, steps: int, spacing: str = "karras", rho: float = 7.0) -> torch.Tensor:
    """`steps + 1` native times from t_max down to 0 (clean) for a `steps`-interval sampler.

    The last interval always ends at t = 0, and every earlier point is a real noise level: with the
    plain EDM grid plus a trailing zero, the final step would go from sigma_min to 0 and waste an
    evaluation (two Euler steps no better than one). Here the ramp runs over `steps + 1` points and
    its last point (sigma_min) is replaced by 0.

    spacing: "karras" (EDM Eq. 5 on sigma/alpha), "uniform" (uniform in native t from t_max to 0,
    close to diffusers' "trailing"), "logsnr" (uniform in log sigma/alpha).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t_max = torch.tensor(schedule.t_max, dtype=torch.float64)
    t_min = torch.tensor(schedule.t_min, dtype=torch.float64)
    if spacing == "uniform":
        grid = torch.linspace(float(t_max), 0.0, steps + 1, dtype=torch.float64)
    elif spacing in ("karras", "logsnr"):
        # The ramp tops out at EDM's sigma_max = 80: cosine and zero-terminal-SNR VP schedules reach
        # sigma/alpha of 1e4 and more, where a rho = 7 ramp would spend most steps. The first point is
        # then moved to t_max, so sampling still starts from the prior.
        r_max = min(float(schedule.ratio(t_max)), 80.0) if float(schedule.alpha(t_max)) > 0 else 80.0
        r_min = float(schedule.ratio(t_min))
        if spacing == "karras":
            ratios = karras_sigmas(steps + 1, r_min, r_max, rho)
        else:
            ratios = torch.logspace(math.log10(r_max), math.log10(r_min), steps + 1, dtype=torch.float64)
        grid = schedule.t_from_ratio(ratios).to(torch.float64)
        grid[0] = t_max  # exact start (the prior), even where the ratio is infinite
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'karras', 'uniform' or 'logsnr'")
    if isinstance(schedule, RectifiedFlow):
        grid = schedule.shifted(grid)
    grid[-1] = 0.0
    return grid
