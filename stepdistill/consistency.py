"""Consistency models' parameterisations on a `Denoiser`: the boundary condition f(x, t_min) = x exactly
(`ConsistencyDenoiser`: CM's sigma_min shift on any schedule, or LCM's discrete scalings), multistep segments
(`SegmentConsistencyDenoiser`), and LCM's guidance-scale embedding as `timestep_cond` (`GuidanceConditioned`)."""

from __future__ import annotations

import torch
from torch import nn

from .denoiser import Denoiser, broadcast
from .schedules import NoiseSchedule

__all__ = ["LCM_TIMESTEP_SCALING", "WrapsDenoiser", "consistency_scalings", "lcm_scalings", "ConsistencyDenoiser", "SegmentConsistencyDenoiser",
           "guidance_scale_embedding", "GuidanceConditioned"]


class WrapsDenoiser(nn.Module):
    """A function built on a `Denoiser` (`self.denoiser`) that shows its network and schedule: a student
    exports `.net`, a `roles.Generator` reads `.schedule`."""

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    def sampling_boundary(self) -> tuple[str | None, float | None]:
        """(boundary, timestep_scaling) of the consistency boundary condition applied inside: what a student's
        sampler and its exported scheduler must apply too (`sampler_spec.SamplerSpec`)."""
        return self.denoiser.sampling_boundary()


def consistency_scalings(sigma: torch.Tensor, *, sigma_data: float = 0.5,
                         sigma_min: float = 0.002) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of consistency models (Song et al. 2023, App. C; official `cm/karras_diffusion.py::
    get_scalings_for_boundary_condition`), at the VE noise level sigma = sigma_t / alpha_t:

        c_skip = sigma_d^2 / ((sigma - sigma_min)^2 + sigma_d^2)
        c_out  = sigma_d (sigma - sigma_min) / sqrt(sigma^2 + sigma_d^2)

    so that c_skip = 1 and c_out = 0 at sigma_min: f(x, sigma_min) = x exactly."""
    # Both levels on float32's grid (the networks' times are float32): sigma_min itself gives exactly (1, 0).
    sigma = torch.as_tensor(sigma).float().double()
    sigma_min = float(torch.tensor(sigma_min, dtype=torch.float32))
    c_skip = sigma_data**2 / ((sigma - sigma_min) ** 2 + sigma_data**2)
    c_out = sigma_data * (sigma - sigma_min) / (sigma**2 + sigma_data**2).sqrt()
    return c_skip.float(), c_out.float()


def lcm_scalings(timestep: torch.Tensor, *, sigma_data: float = 0.5,
                 timestep_scaling: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of latent consistency models at the network's integer timestep (Luo et al. 2023;
    diffusers `scalings_for_boundary_conditions`): with u = timestep_scaling * t,
    c_skip = sigma_d^2 / (u^2 + sigma_d^2), c_out = u / sqrt(u^2 + sigma_d^2); c_skip(0) = 1, c_out(0) = 0."""
    u = timestep_scaling * torch.as_tensor(timestep, dtype=torch.float64)
    c_skip = sigma_data**2 / (u**2 + sigma_data**2)
    c_out = u / (u**2 + sigma_data**2).sqrt()
    return c_skip.float(), c_out.float()


LCM_TIMESTEP_SCALING = 10.0  # LCM's boundary scaling (diffusers LCMScheduler's default)


class ConsistencyDenoiser(WrapsDenoiser):
    """f(x_t, t): a consistency function on any `Denoiser`, with the boundary condition f(x, t_min) = x.

    boundary "lcm" (latent consistency models, VP-discrete teachers): f = c_skip x_t + c_out x0_hat with
    `lcm_scalings` at the network timestep (diffusers' LCMScheduler applies the same at inference).
    boundary "cm" (Song et al. 2023, any schedule): the official f = c_skip(s) x + c_out(s) F on the VE sample
    x = x_t / alpha_t at level s = sigma_t / alpha_t, where F is the EDM network output that gives the
    denoiser's x0 (x0 = c_skip_edm x + c_out_edm F, exactly the network's own output for an "edm" teacher).
    Since c_out / c_out_edm = (s - s_min) / s, f = c_skip(s) x + (1 - s_min / s)(x0 - c_skip_edm(s) x), which
    needs F for no prediction type."""

    def __init__(self, denoiser: Denoiser, boundary: str = "cm", *, sigma_min: float = 0.002,
                 timestep_scaling: float = LCM_TIMESTEP_SCALING):
        super().__init__()
        if boundary not in ("cm", "lcm"):
            raise ValueError(f"unknown consistency boundary {boundary!r}; expected 'cm' or 'lcm'")
        self.denoiser, self.boundary = denoiser, boundary
        self.sigma_min, self.timestep_scaling = sigma_min, timestep_scaling

    def sampling_boundary(self) -> tuple[str | None, float | None]:
        return self.boundary, self.timestep_scaling if self.boundary == "lcm" else None

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out) at native times t: c_out multiplies x0_hat ("lcm") or the EDM output F ("cm")."""
        schedule, sigma_data = self.denoiser.schedule, self.denoiser.sigma_data
        if self.boundary == "lcm":
            return lcm_scalings(schedule.timestep(t), sigma_data=sigma_data, timestep_scaling=self.timestep_scaling)
        return consistency_scalings(schedule.ratio(t.double()), sigma_data=sigma_data, sigma_min=self.sigma_min)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, **cond) -> torch.Tensor:
        x_t = x_t.float()
        t = Denoiser._times(t, x_t)
        c_skip, c_out = (broadcast(c.to(x_t.device), x_t) for c in self.scalings(t))
        x0 = self.denoiser(x_t, t, **cond)
        if self.boundary == "lcm":
            return c_skip * x_t + c_out * x0
        schedule = self.denoiser.schedule
        s = schedule.ratio(t.double())
        s_min = float(torch.tensor(self.sigma_min, dtype=torch.float32))  # on the float32 grid, as the scalings
        x = x_t / broadcast(schedule.alpha(t).to(x_t.device), x_t)
        c_skip_edm = broadcast((self.denoiser.sigma_data ** 2 / (s ** 2 + self.denoiser.sigma_data ** 2)).float(), x_t)
        shrink = broadcast((1 - s_min / s.float().double()).float().to(x_t.device), x_t)
        return c_skip * x + shrink * (x0 - c_skip_edm.to(x_t.device) * x)


class SegmentConsistencyDenoiser(WrapsDenoiser):
    """A multistep (MLCM / phased) consistency function: the time range is cut at `edges` (native times,
    descending from t_max to 0, e.g. `time_grid(schedule, segments, "uniform")`, TLCM's linspace(999, 0, 9)),
    and on the segment (e_{j+1}, e_j] the student maps x_t to its segment's lower edge with a DDIM jump on
    its own x0: f(x_t, t) = alpha(e_{j+1}) x0 + sigma(e_{j+1}) (x_t - alpha_t x0) / sigma_t (PCM's
    `ddim_style_multiphase_pred`). As t comes down to e_{j+1} the jump becomes the identity, the boundary
    condition of each segment; a point exactly at an edge is the top of the segment below it (sampling
    from e_j jumps to e_{j+1}), so a recipe takes x itself as the target there. The last segment ends at 0,
    where f is x0: one segment is a consistency model with c_skip = 0 inside it."""

    def __init__(self, denoiser: Denoiser, edges: torch.Tensor):
        super().__init__()
        edges = torch.as_tensor(edges, dtype=torch.float64)
        if edges.ndim != 1 or len(edges) < 2 or not bool((edges[1:] < edges[:-1]).all()) or float(edges[-1]) != 0:
            raise ValueError(f"segment edges must descend strictly and end at 0; got {edges.tolist()}")
        self.denoiser = denoiser
        self.register_buffer("edges", edges, persistent=False)

    def lower_edge(self, t: torch.Tensor) -> torch.Tensor:
        """The lower edge of each t's segment: the largest edge strictly below t."""
        below = self.edges.to(t.device).unsqueeze(0) < t.to(torch.float64).unsqueeze(1)  # (B, E)
        return torch.where(below, self.edges.to(t.device), torch.full_like(self.edges, -1.0)).amax(1)

    def jump(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The segment function given the network's x0 at (x_t, t): the DDIM jump to t's lower edge."""
        from .samplers import ddim_step

        t = Denoiser._times(t, x_t)
        return ddim_step(None, self.denoiser.schedule, x_t.float(), t, self.lower_edge(t), x0=x0)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, **cond) -> torch.Tensor:
        x_t = x_t.float()
        t = Denoiser._times(t, x_t)
        return self.jump(x_t, t, self.denoiser(x_t, t, **cond))


def guidance_scale_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """LCM's w-embedding: the sinusoidal embedding of 1000 w (B, dim), computed by diffusers' own pipeline
    method, so a student trains on exactly what the stock pipeline feeds its `timestep_cond` at inference
    (there w = guidance_scale - 1)."""
    from diffusers import StableDiffusionPipeline

    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w.cpu(), embedding_dim=dim).to(w.device)


class GuidanceConditioned(WrapsDenoiser):
    """A student that takes LCM's guidance w as an input (w-conditioning; the UNet's `time_cond_proj_dim`):
    `self(x_t, t, w=..., **cond)` runs `inner` (a `Denoiser`, or a consistency function on one) with
    `timestep_cond` = the embedding of w (per sample, or one value); without `w` it runs at `self.w`, the
    scale it samples with by default."""

    def __init__(self, inner: nn.Module, dim: int, w: float):
        super().__init__()
        self.denoiser, self.dim, self.w = inner, dim, float(w)

    def forward(self, x_t: torch.Tensor, t, *, w=None, **cond) -> torch.Tensor:
        w = torch.as_tensor(self.w if w is None else w, dtype=torch.float32, device=x_t.device)
        emb = guidance_scale_embedding(w.expand(x_t.shape[0]) if w.ndim == 0 else w, self.dim)
        return self.denoiser(x_t, t, timestep_cond=emb.to(x_t.device), **cond)
