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

from .sharding import is_sharded
from .network_call import bottleneck_tokens, call_network
from .schedules import NoiseSchedule

LOW_PRECISION = (torch.bfloat16, torch.float16)

__all__ = [
    "PREDICTION_TYPES",
    "to_eps", "to_v", "to_flow", "to_score",
    "x0_from_eps", "x0_from_v", "x0_from_flow",
    "to_x0", "from_x0", "native_loss_weight",
    "Denoiser", "broadcast",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow", "edm")


def broadcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample (B,) or scalar coefficients against x (B, ...)."""
    s = torch.as_tensor(s, device=x.device)
    if s.ndim == 0:
        return s
    return s.reshape(s.shape + (1,) * (x.ndim - s.ndim))


# ----------------------------------------------------------------------------
# x0 -> other parameterisations.

def to_eps(x_t, x0, alpha, sigma):
    return (x_t - broadcast(alpha, x0) * x0) / broadcast(sigma, x0)


def to_v(x_t, x0, alpha, sigma):
    return broadcast(alpha, x0) * to_eps(x_t, x0, alpha, sigma) - broadcast(sigma, x0) * x0


def to_flow(x_t, x0, alpha, sigma):
    return to_eps(x_t, x0, alpha, sigma) - x0


def to_score(x_t, x0, alpha, sigma):
    return -(x_t - broadcast(alpha, x0) * x0) / broadcast(sigma, x0) ** 2


# ----------------------------------------------------------------------------
# other parameterisations -> x0.

def x0_from_eps(x_t, eps, alpha, sigma):
    return (x_t - broadcast(sigma, x_t) * eps) / broadcast(alpha, x_t)


def x0_from_v(x_t, v, alpha, sigma):
    a, s = broadcast(alpha, x_t), broadcast(sigma, x_t)
    return (a * x_t - s * v) / (a**2 + s**2)


def x0_from_flow(x_t, u, alpha, sigma):
    a, s = broadcast(alpha, x_t), broadcast(sigma, x_t)
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
        return broadcast(c_skip, x_t) * x_t + broadcast(c_out, x_t) * out
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
        return (x0 - broadcast(c_skip, x_t) * x_t) / broadcast(c_out, x_t)
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

    The network runs in its own dtype (a bf16 / fp16 one, a frozen teacher under mixed precision, under autocast
    to it); the input scaling and the conversion to x0 run in float32, so losses never branch on dtype or
    prediction type.
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
    def _no_split_modules(self) -> list[str] | None:
        """The network's blocks, for FSDP's per-block units (accelerate's transformer-based wrap reads the prepared
        module's own list: without it a role would be one unit, gathered whole for every pass)."""
        return getattr(self.net, "_no_split_modules", None)

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
        net_in = x_t * broadcast(self.schedule.c_in(t), x_t)
        if concat is not None:
            net_in = torch.cat([net_in, concat.float()], dim=1)
        self._select_adapter()
        dtype = self.dtype
        if dtype in LOW_PRECISION:  # a frozen network held in the compute dtype: its conditions stay float32
            with torch.autocast(net_in.device.type, dtype=dtype):
                return call_network(self.net, net_in.to(dtype), self.schedule.timestep(t), cond)
        return call_network(self.net, net_in.to(dtype), self.schedule.timestep(t), cond)

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
        return x_t - broadcast(self.schedule.alpha(t), x_t) * base, base

    def sampling_boundary(self) -> tuple[str | None, float | None]:
        """(boundary, timestep_scaling) of the consistency boundary condition this function applies: none."""
        return None, None

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
        # FSDP gathers a unit's weights for a backward pass when gradients reach that unit's output; the network's
        # own weights (its root unit: the input convolution, the time embedding) are gathered again, for a second
        # backward through the same graph (DMD2's GAN balance), only from its final output. So a sharded network
        # runs to its end, and that output joins the graph with weight zero.
        stop = not is_sharded(self.net)

        def hook(_module, _inputs, output):
            captured.append(bottleneck_tokens(output))
            if stop:
                raise _Stop

        handle = _bottleneck_module(self.net).register_forward_hook(hook)
        out = None
        try:
            out = self._run(x_t, t, concat, cond)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the bottleneck hook did not fire")
        if out is not None and torch.is_grad_enabled():
            return captured[0].float() + 0.0 * network_output(out).float().sum()
        return captured[0].float()
