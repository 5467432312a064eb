"""How to call an exported text-to-image pipeline so that it samples as its student did: the inverse of the export,
read from the folder's `student.json` (`sampler_spec`). The model card's code makes the same call for one seed;
`eval/evaluate.py` makes it for every image, with that image's own noise.
"""

from __future__ import annotations

import inspect

import torch

from ..families import family_of_network
from ..sampler_spec import SamplerSpec

__all__ = ["pipeline_arguments"]


def pipeline_arguments(pipe, spec: SamplerSpec, record: dict, *, steps: int | None = None,
                       noise: torch.Tensor | None = None) -> dict:
    """Keyword arguments of `pipe(prompts, **arguments)` that sample `steps` of the student's times (default: its
    own count). `noise`: the students' z ~ N(0, I), (B, *shape) in the model's space, one row per prompt; it
    becomes the pipeline's `latents` at the scale the student's first input has (sigma(t_0) z), so the images do
    not depend on how the pipeline draws its own noise."""
    from diffusers import EulerDiscreteScheduler

    base = pipe.base(0) if hasattr(pipe, "num_students") else pipe  # a routed pipeline calls its base pipeline
    times = spec.exported_times(steps)
    args = {"num_inference_steps": len(times), **record.get("call", {})}
    args.setdefault("guidance_scale", 0.0)  # guidance is distilled in (Flux's embedded scale is in `call`)
    if spec.flow:
        args["sigmas"] = times
    elif "timesteps" in inspect.signature(type(base).__call__).parameters:
        args["timesteps"] = times
    if spec.gamma is not None:
        args["eta"] = spec.gamma  # TCDScheduler's gamma
    if noise is not None:
        # the one-step export's Euler scheduler scales the latents itself (init_noise_sigma, scale_model_input)
        latents = noise if isinstance(base.scheduler, EulerDiscreteScheduler) else noise * spec.input_scale
        if family_of_network(base.components.get("unet") or base.components.get("transformer")).packed:
            b, c, h, w = latents.shape
            latents = type(base)._pack_latents(latents, b, c, h, w)
        args["latents"] = latents
    return args
