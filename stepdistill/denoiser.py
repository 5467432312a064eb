"""One interface for every network: `Denoiser(x_t, t, **cond) -> x0` in float32.

Conversions between parameterisations are pure functions of (x_t, prediction, alpha, sigma) with
x_t = alpha x0 + sigma eps. They do not assume alpha^2 + sigma^2 = 1, so the same formulas serve VP,
EDM and rectified-flow schedules:

    eps   = (x_t - alpha x0) / sigma
    v     = alpha eps - sigma x0                       (Salimans & Ho 2022, generalised)
    flow  = eps - x0                                   (d x_t / dt for alpha = 1 - t, sigma = t)
    score = -(x_t - alpha x0) / sigma^2 = -eps / sigma (Tweedie)
    edm   : x0 = c_skip x_t + c_out F                  (Karras et al. 2022, Eq. 7, alpha = 1)

Losses, recipes and samplers only ever see x0; the wrapper owns prediction types and dtypes.
"""

from __future__ import annotations

import torch
from torch import nn

from .conditioning import cat_conditions
from .network_call import bottleneck_tokens, call_network
from .schedules import NoiseSchedule

__all__ = [
    "PREDICTION_TYPES",
    "to_eps", "to_v", "to_flow", "to_score",
    "x0_from_eps", "x0_from_v", "x0_from_flow",
    "to_x0", "from_x0", "native_loss_weight",
    "Denoiser", "CFGDenoiser", "lcm_guidance_to_cfg", "guidance_scale_embedding", "GuidanceConditioned",
    "ConsistencyDenoiser", "SegmentConsistencyDenoiser", "consistency_scalings", "lcm_scalings",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow", "edm")


def _b(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample (B,) or scalar coefficients against x (B, ...)."""
    s = torch.as_tensor(s, device=x.device)
    if s.ndim == 0:
        return s
    return s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


# ----------------------------------------------------------------------------
# x0 -> other parameterisations.

def to_eps(x_t, x0, alpha, sigma):
    return (x_t - _b(alpha, x0) * x0) / _b(sigma, x0)


def to_v(x_t, x0, alpha, sigma):
    return _b(alpha, x0) * to_eps(x_t, x0, alpha, sigma) - _b(sigma, x0) * x0


def to_flow(x_t, x0, alpha, sigma):
    return to_eps(x_t, x0, alpha, sigma) - x0


def to_score(x_t, x0, alpha, sigma):
    return -(x_t - _b(alpha, x0) * x0) / _b(sigma, x0) ** 2


# ----------------------------------------------------------------------------
# other parameterisations -> x0.

def x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - _b(sigma, x_t) * eps) / _b(alpha, x_t)


def x0_from_v(x_t, v, alpha, sigma):
    a, s = _b(alpha, x_t), _b(sigma, x_t)
    return (a * x_t - s * v) / (a**2 + s**2)


def x0_from_flow(x_t, u, alpha, sigma):
    a, s = _b(alpha, x_t), _b(sigma, x_t)
    return (x_t - s * u) / (a + s)


def _edm_scalings(sigma, sigma_data):
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out


def to_x0(prediction_type: str, x_t, out, alpha, sigma, sigma_data: float = 0.5):
    """x0 from a network output of the given prediction type."""
    if prediction_type == "epsilon":
        return x0_from_eps(x_t, out, alpha, sigma)
    if prediction_type == "v_prediction":
        return x0_from_v(x_t, out, alpha, sigma)
    if prediction_type == "flow":
        return x0_from_flow(x_t, out, alpha, sigma)
    if prediction_type == "sample":
        return out
    if prediction_type == "edm":
        c_skip, c_out = _edm_scalings(torch.as_tensor(sigma), sigma_data)
        return _b(c_skip, x_t) * x_t + _b(c_out, x_t) * out
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def from_x0(prediction_type: str, x_t, x0, alpha, sigma, sigma_data: float = 0.5):
    """The network output of the given prediction type that yields x0 (training targets)."""
    if prediction_type == "epsilon":
        return to_eps(x_t, x0, alpha, sigma)
    if prediction_type == "v_prediction":
        return to_v(x_t, x0, alpha, sigma)
    if prediction_type == "flow":
        return to_flow(x_t, x0, alpha, sigma)
    if prediction_type == "sample":
        return x0
    if prediction_type == "edm":
        c_skip, c_out = _edm_scalings(torch.as_tensor(sigma), sigma_data)
        return (x0 - _b(c_skip, x_t) * x_t) / _b(c_out, x_t)
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


def native_loss_weight(prediction_type: str, alpha, sigma, sigma_data: float = 0.5) -> torch.Tensor:
    """w(t) such that w * |x0_hat - x0|^2 == |out_hat - out|^2 in the network's own parameterisation.

    Derived from the Jacobian of `to_x0` with respect to the output: e.g. v-prediction has
    d x0 / d v = -sigma / (alpha^2 + sigma^2). For "edm" this is EDM's lambda(sigma) (Eq. 8).
    """
    alpha, sigma = torch.as_tensor(alpha), torch.as_tensor(sigma)
    if prediction_type == "epsilon":
        return (alpha / sigma) ** 2
    if prediction_type == "v_prediction":
        return ((alpha**2 + sigma**2) / sigma) ** 2
    if prediction_type == "flow":
        return ((alpha + sigma) / sigma) ** 2
    if prediction_type == "sample":
        return torch.ones_like(sigma)
    if prediction_type == "edm":
        return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")


# ----------------------------------------------------------------------------
# The wrapper.

def network_output(out) -> torch.Tensor:
    """The prediction of a network call: the tensor itself, a tuple's first entry, or a `BaseOutput`'s `sample`."""
    return out[0] if isinstance(out, (tuple, list)) else getattr(out, "sample", out)


class _Stop(Exception):
    """Raised by the bottleneck hook: `Denoiser.features` needs no layer past it."""


def _bottleneck_module(net: nn.Module) -> nn.Module:
    if getattr(net, "mid_block", None) is not None:
        return net.mid_block
    blocks = getattr(net, "transformer_blocks", None)
    if blocks is not None and len(blocks) > 0:  # DiT / PixArt / SD3: the middle transformer block
        return blocks[len(blocks) // 2]
    raise TypeError(f"{type(net).__name__} has neither a mid_block nor transformer_blocks to take features from")


class Denoiser(nn.Module):
    """Wrap a diffusers denoising network so that `self(x_t, t, **cond)` is the x0 prediction.

    net:     UNet2DModel (pass `class_labels=`), UNet2DConditionModel (`encoder_hidden_states=`; SDXL's
             `added_cond_kwargs=`), DiT / PixArt / SD3 / Flux transformers (`encoder_hidden_states=`,
             `pooled_projections=`, Flux's `guidance=`; see `network_call`);
             any module whose output is a tensor, a tuple or a diffusers `BaseOutput`.
    t:       native time of `schedule`, a scalar or shape (B,).
    adapter: for a peft-adapted net shared between roles, the adapter this role runs with; None
             runs the base weights with adapters disabled (SwiftBrush's real score).
    residual: the network models the residual over its image condition y (`concat=`, super-resolution's
             bicubic upsample; SRDiff, Li et al. 2022): it sees x_t - alpha y, the noised residual
             alpha (x0 - y) + sigma eps, and x0 = y + its prediction. Still a denoiser of x0 itself, so
             samplers, losses and recipes are unchanged; an untrained network starts near y, not noise.

    The network runs in its own dtype; the input scaling and the conversion to x0 run in float32,
    so losses never branch on dtype or prediction type.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, prediction_type: str,
                 *, sigma_data: float = 0.5, adapter: str | None = None, learn_sigma: bool = False,
                 residual: bool = False):
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.net = net
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.sigma_data = sigma_data
        self.adapter = adapter
        # DiT/PixArt checkpoints predict (eps, variance) stacked on channels; keep the first half.
        self.learn_sigma = learn_sigma
        self.residual = residual

    @property
    def dtype(self) -> torch.dtype:
        param = next(self.net.parameters(), None)
        return torch.float32 if param is None else param.dtype

    def _select_adapter(self) -> None:
        from .adapters import activate, adapter_names

        names = adapter_names(self.net)
        if self.adapter is not None and self.adapter not in names:
            raise ValueError(f"adapter {self.adapter!r} requested but the network has {sorted(names) or 'none'}")
        if names:
            activate(self.net, self.adapter)

    def _run(self, x_t: torch.Tensor, t: torch.Tensor, concat: torch.Tensor | None, cond: dict):
        """The network on (c_in(t) x_t [, concat], t): an image condition (`concat=`, super-resolution)
        joins the input channels after the scaling, since it is not noised."""
        net_in = x_t * _b(self.schedule.c_in(t), x_t)
        if concat is not None:
            net_in = torch.cat([net_in, concat.float()], dim=1)
        self._select_adapter()
        return call_network(self.net, net_in.to(self.dtype), self.schedule.timestep(t), cond)

    @staticmethod
    def _times(t: torch.Tensor | float, x_t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        return t.expand(x_t.shape[0]) if t.ndim == 0 else t

    def _residual_input(self, x_t: torch.Tensor, t: torch.Tensor,
                        concat: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(what the network sees, what its x0 is a residual over): for a residual network the noised residual
        x_t - alpha y and the image condition y, else x_t and nothing."""
        if not self.residual:
            return x_t, None
        if concat is None:
            raise ValueError("a residual denoiser needs its image condition (concat=)")
        base = concat.float()
        return x_t - _b(self.schedule.alpha(t), x_t) * base, base

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, *, concat: torch.Tensor | None = None,
                **cond) -> torch.Tensor:
        x_t = x_t.float()
        t = self._times(t, x_t)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        x_t, base = self._residual_input(x_t, t, concat)
        out = self._run(x_t, t, concat, cond)
        out = network_output(out)
        if self.learn_sigma:
            out = out[:, : x_t.shape[1]]
        x0 = to_x0(self.prediction_type, x_t, out.float(), alpha, sigma, self.sigma_data)
        return x0 if base is None else base + x0

    def features(self, x_t: torch.Tensor, t: torch.Tensor | float, *, concat: torch.Tensor | None = None,
                 **cond) -> torch.Tensor:
        """The network's bottleneck activations at (x_t, t), float32, without running the rest of it: the
        mid block's output of a UNet, the middle transformer block's tokens of a DiT / SD3. DMD2's
        discriminator reads them (`stepdistill.discriminator`). Gradients flow to x_t and to the
        network's trainable parameters."""
        x_t = x_t.float()
        t = self._times(t, x_t)
        x_t, _ = self._residual_input(x_t, t, concat)
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(bottleneck_tokens(output))
            raise _Stop

        handle = _bottleneck_module(self.net).register_forward_hook(hook)
        try:
            self._run(x_t, t, concat, cond)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the bottleneck hook did not fire")
        return captured[0].float()


class CFGDenoiser(nn.Module):
    """Classifier-free guidance on x0: `uncond + scale * (cond - uncond)`.

    scale = 1 is the conditional model; scale = 0 the unconditional one. The guidance is linear, so
    it is the same whether applied to x0, eps or v. `uncond` holds the keyword arguments of the
    unconditional branch (null class label, empty-prompt embeddings); both branches run as one batch.
    """

    def __init__(self, denoiser: Denoiser, scale: float):
        super().__init__()
        self.denoiser = denoiser
        self.scale = scale

    def forward(self, x_t, t, *, uncond: dict | None = None, **cond):
        if self.scale == 1.0 or uncond is None:
            if self.scale != 1.0:
                raise ValueError("CFGDenoiser with scale != 1 needs `uncond=` conditioning")
            return self.denoiser(x_t, t, **cond)
        x0_cond, x0_uncond = self.branches(x_t, t, uncond=uncond, **cond)
        return x0_uncond + self.scale * (x0_cond - x0_uncond)

    def branches(self, x_t, t, *, uncond: dict, **cond) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional and unconditional x0 predictions, from one batched call (for losses that
        apply the guidance themselves, such as the fused VSD kernel)."""
        t = torch.as_tensor(t, device=x_t.device, dtype=torch.float32)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        both = cat_conditions(uncond, cond)
        x0_uncond, x0_cond = self.denoiser(torch.cat([x_t, x_t]), torch.cat([t, t]), **both).chunk(2)
        return x0_cond, x0_uncond


# ----------------------------------------------------------------------------
# Consistency models: the boundary condition f(x, t_min) = x.

class WrapsDenoiser(nn.Module):
    """A function built on a `Denoiser` (`self.denoiser`) that shows its network and schedule: a student
    exports `.net`, a `roles.Generator` reads `.schedule`."""

    @property
    def net(self) -> nn.Module:
        return self.denoiser.net

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule


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
                 timestep_scaling: float = 10.0):
        super().__init__()
        if boundary not in ("cm", "lcm"):
            raise ValueError(f"unknown consistency boundary {boundary!r}; expected 'cm' or 'lcm'")
        self.denoiser, self.boundary = denoiser, boundary
        self.sigma_min, self.timestep_scaling = sigma_min, timestep_scaling

    def scalings(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c_skip, c_out) at native times t: c_out multiplies x0_hat ("lcm") or the EDM output F ("cm")."""
        schedule, sigma_data = self.denoiser.schedule, self.denoiser.sigma_data
        if self.boundary == "lcm":
            return lcm_scalings(schedule.timestep(t), sigma_data=sigma_data, timestep_scaling=self.timestep_scaling)
        return consistency_scalings(schedule.ratio(t.double()), sigma_data=sigma_data, sigma_min=self.sigma_min)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor | float, **cond) -> torch.Tensor:
        x_t = x_t.float()
        t = Denoiser._times(t, x_t)
        c_skip, c_out = (_b(c.to(x_t.device), x_t) for c in self.scalings(t))
        x0 = self.denoiser(x_t, t, **cond)
        if self.boundary == "lcm":
            return c_skip * x_t + c_out * x0
        schedule = self.denoiser.schedule
        s = schedule.ratio(t.double())
        s_min = float(torch.tensor(self.sigma_min, dtype=torch.float32))  # on the float32 grid, as the scalings
        x = x_t / _b(schedule.alpha(t).to(x_t.device), x_t)
        c_skip_edm = _b((self.denoiser.sigma_data ** 2 / (s ** 2 + self.denoiser.sigma_data ** 2)).float(), x_t)
        shrink = _b((1 - s_min / s.float().double()).float().to(x_t.device), x_t)
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


def lcm_guidance_to_cfg(w: float) -> float:
    """LCM embeds w with x = cond + w (cond - uncond) (Luo et al. 2023, Eq. 9): our scale is w + 1."""
    return w + 1.0
