"""How each network family is called on (x_t, timestep, condition): what `Denoiser` runs.

UNets, DiT / PixArt and SD3's MMDiT take the (B, C, H, W) input and the timestep as they are. Flux's
transformer takes 2x2-packed latent tokens with their rotary position ids, the timestep divided by 1000 (the
network multiplies it back) and, for guidance-distilled checkpoints (Flux-dev), the embedded guidance scale;
FluxPipeline's own packing helpers do the layout, so a Flux teacher denoises (B, C, H, W) latents like any
other and the trio, samplers and losses never see tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from .families import family_of_network

__all__ = ["call_network", "bottleneck_tokens"]


def _inner(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)  # torch.compile's wrapper


def call_network(net: nn.Module, x: torch.Tensor, timestep: torch.Tensor, cond: dict):
    """The network's output on input `x` (B, C, H, W) at `timestep` (the schedule's network time)."""
    if family_of_network(net).packed:
        return _call_flux(net, x, timestep, cond)
    return net(x, timestep=timestep, **cond)  # by keyword: SD3 / PixArt take encoder_hidden_states second


def _call_flux(net: nn.Module, x: torch.Tensor, timestep: torch.Tensor, cond: dict) -> torch.Tensor:
    from diffusers import FluxPipeline

    b, c, h, w = x.shape
    if h % 2 or w % 2:
        raise ValueError(f"Flux packs 2x2 latent patches; latents of {h}x{w} are not even-sized")
    cond = dict(cond)
    guidance = cond.pop("guidance", None)
    if _inner(net).config.guidance_embeds:
        if guidance is None:
            raise ValueError("this Flux transformer embeds the guidance scale (Flux-dev): the condition needs `guidance`")
    else:
        guidance = None  # Flux-schnell: no guidance embedding
    text = cond["encoder_hidden_states"]
    out = net(FluxPipeline._pack_latents(x, b, c, h, w), timestep=timestep.to(x.dtype) / 1000,
              img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
              txt_ids=torch.zeros(text.shape[1], 3, device=x.device, dtype=x.dtype), guidance=guidance, **cond)
    out = out[0] if isinstance(out, (tuple, list)) else out.sample
    return FluxPipeline._unpack_latents(out, h, w, 1)


def bottleneck_tokens(output) -> torch.Tensor:
    """A bottleneck module's output as one tensor: joint (MMDiT / Flux) blocks return (text tokens, image
    tokens), of which the discriminator reads the image tokens."""
    if isinstance(output, (tuple, list)):
        return output[-1]
    return output
