"""The stock schedulers an export samples its student with: LCMScheduler (TCDScheduler with TCD's gamma) for
multistep VP-discrete students, a "trailing" EulerDiscreteScheduler for one-step ones, the stochastic
FlowMatchEulerDiscreteScheduler for flow students (the `stepdistill.export` docstring says why each is exact).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

__all__ = ["TIMESTEP_SCALING", "lcm_scheduler", "one_step_scheduler", "flow_scheduler", "check_timesteps",
           "check_sigmas"]


TIMESTEP_SCALING = 1e4  # LCM boundary condition: c_skip = 0.25 / ((1e4 t)^2 + 0.25) < 3e-9 for t >= 1


def lcm_scheduler(config: Mapping, *, tcd: bool = False, **overrides):
    """An LCMScheduler with the teacher's noise schedule, acting as the plain student sampler (module docstring);
    `tcd`: a TCDScheduler with the same settings (a student sampled with TCD's gamma, its `eta`)."""
    from diffusers import LCMScheduler, TCDScheduler

    config = dict(config)
    if config.get("beta_schedule") is None and config.get("trained_betas") is None:
        raise ValueError(f"scheduler config ({config.get('_class_name', 'no _class_name')}) is not a VP-discrete "
                         "(DDPM-family) schedule with betas; the export supports those only")
    if config.get("prediction_type") not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"scheduler config has prediction_type={config.get('prediction_type')!r}; "
                         "expected one of epsilon, v_prediction, sample")
    # Keep only what LCMScheduler takes (a DDPM config's variance_type etc. mean nothing to it); the
    # teacher's values, defaults included, are its schedule: LCMScheduler's defaults differ (SD's betas).
    accepted = set(inspect.signature(LCMScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in config.items() if k in accepted}
    # with k = 1, LCM's default schedule for K steps is 999 - floor(i * N / K): DMD2's evenly spaced steps
    # ([999, 749, 499, 249] for K = 4), and every custom timestep lies on its grid. A consistency student
    # overrides both: LCM's scaling 10 and its skip grid's length (50: K steps of {19, 39, ..., 999}).
    config.update(timestep_scaling=TIMESTEP_SCALING, original_inference_steps=config.get("num_train_timesteps", 1000))
    config.update(overrides)
    return (TCDScheduler if tcd else LCMScheduler).from_config(config)


def one_step_scheduler(lcm_config: Mapping):
    """A stock EulerDiscreteScheduler on the same schedule that runs a one-step student exactly: with
    "trailing" spacing its init_noise_sigma is sigma_VE(t_0) = sqrt((1 - abar) / abar) and `scale_model_input`
    divides by sqrt(sigma_VE^2 + 1), so the network sees sqrt(1 - abar_t0) z, the generator's input; its
    Euler step to sigma = 0 returns the x0 prediction (deterministic, no clipping, as LCMScheduler here)."""
    from diffusers import EulerDiscreteScheduler

    accepted = set(inspect.signature(EulerDiscreteScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(lcm_config).items() if k in accepted}
    config.update(timestep_spacing="trailing", final_sigmas_type="zero", use_karras_sigmas=False)
    return EulerDiscreteScheduler.from_config(config)


def flow_scheduler(config: Mapping):
    """FlowMatchEulerDiscreteScheduler on the given sigmas unchanged (shift 1, no dynamic shifting: the student's
    times are already shifted) with the stochastic step: x0, then re-noised to the next sigma."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(config), shift=1.0, use_dynamic_shifting=False,
                                                       stochastic_sampling=True)


def check_timesteps(timesteps, num_train_timesteps: int | None) -> list[int]:
    ts = list(timesteps) if timesteps is not None else []
    if not ts:
        raise ValueError("timesteps is empty: give the student's input times, e.g. [999] or [999, 749, 499, 249]")
    if not all(isinstance(t, int) or (hasattr(t, "is_integer") and float(t).is_integer()) for t in ts):
        raise ValueError(f"timesteps must be integers, got {ts}")
    ts = [int(t) for t in ts]
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    if ts[-1] < 1 or num_train_timesteps is not None and ts[0] >= num_train_timesteps:
        raise ValueError(f"timesteps must lie in [1, {num_train_timesteps or 'num_train_timesteps'}) (t = 0 is "
                         f"LCMScheduler's boundary, where it returns its input), got {ts}")
    return ts


def check_sigmas(timesteps) -> list[float]:
    ts = [float(t) for t in (timesteps or [])]
    if not ts:
        raise ValueError("timesteps is empty: give the flow student's input times, e.g. [1.0] or "
                         "[1.0, 0.75, 0.5, 0.25]")
    if any(a <= b for a, b in zip(ts, ts[1:])) or not (0 < ts[-1] and ts[0] <= 1):
        raise ValueError(f"a flow student's timesteps must be strictly descending in (0, 1], got {ts}")
    return ts
