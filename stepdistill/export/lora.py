"""A text-to-image student's LoRA in diffusers' LoRA format, for `pipe.load_lora_weights` on the stock base pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..families import family_of_network
from ..io import atomic_dir
from .card import Usage, write_model_card
from .folders import write_record
from .schedulers import check_sigmas
from .text_to_image import STOCHASTIC_SEED

__all__ = ["export_lora"]




def export_lora(folder: str | Path, net: nn.Module, adapter: str, *, timesteps: list,
                scheduler_options: Mapping | None = None, base_model: str | None = None,
                call_options: Mapping | None = None, recipe: str = "distilled",
                record: str | None = None, tags: tuple[str, ...] = ()) -> Path:
    """Write LoRA `adapter` of a text-to-image student's network in diffusers' LoRA format
    (`pytorch_lora_weights.safetensors`, with peft's adapter config as metadata), as LCM-LoRA and DMD2's SDXL
    LoRA are published: on the stock base pipeline with the student's scheduler,

        pipe.load_lora_weights(folder); pipe.scheduler = <Scheduler>.from_config(pipe.scheduler.config, ...)

    samples as the student does (the LoRA's model card holds the exact lines). UNet students (SD, SDXL) use an
    LCMScheduler (TCDScheduler with TCD's gamma), flow transformers (SD3, Flux) the stochastic
    FlowMatchEulerDiscreteScheduler of `export_text_to_image`."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    from ..adapters import adapter_names

    folder = Path(folder).expanduser()
    for wrapper in ("_orig_mod", "module", "_orig_mod"):
        inner = getattr(net, wrapper, None)
        net = inner if isinstance(inner, nn.Module) else net
    if adapter not in adapter_names(net):
        raise ValueError(f"the network has no LoRA adapter {adapter!r}")
    family = family_of_network(net)  # its `save_lora_weights` names the layers by the denoiser component
    saver, prefix = family.lora_saver, family.component
    # peft's own key names (lora_A / lora_B), which the loader reads as they are, with the adapter's config
    layers = get_peft_model_state_dict(net, adapter_name=adapter)
    metadata = net.peft_config[adapter].to_dict()  # rank, alpha, targets: loaders rebuild the adapter from it
    options = dict(scheduler_options or {})
    if family.flow:
        scheduler = "FlowMatchEulerDiscreteScheduler"
        options = {"shift": 1.0, "use_dynamic_shifting": False, "stochastic_sampling": True}
        steps = (("num_inference_steps", str(len(timesteps))), ("sigmas", repr(check_sigmas(timesteps))))
        draws = (STOCHASTIC_SEED,) if len(timesteps) > 1 else ()
    else:
        gamma = options.pop("gamma", None)  # a student sampled with TCD's gamma: TCDScheduler, eta = gamma
        scheduler = "LCMScheduler" if gamma is None else "TCDScheduler"
        # the student's own times (the scheduler's spacing would give 999, 759, 499, 259 for 999, 749, 499, 249) and
        # its first input sigma(t_0) z, which the scheduler does not scale
        steps = (("num_inference_steps", str(len(timesteps))), ("timesteps", repr(list(timesteps))),
                 *((("eta", repr(gamma)),) if gamma is not None else ()), ("latents", "latents"))
        draws = (f"# the student starts from sigma(t_0) z at t_0 = {timesteps[0]} ({scheduler} passes z unscaled)",
                 "size = pipe.unet.config.sample_size",
                 "shape = (1, pipe.unet.config.in_channels, size, size)",
                 f"latents = (1 - pipe.scheduler.alphas_cumprod[{timesteps[0]}]).sqrt() * torch.randn(shape, "
                 "generator=generator)")
    guidance = () if "guidance_scale" in (call_options or {}) else (("guidance_scale", "0.0"),)
    call = Usage(source=repr(base_model) if base_model else "BASE_MODEL",
                 source_comment="the base model it was distilled from" if base_model else
                 "the teacher it was distilled from", schedulers=(scheduler,),
                 setup=(f'pipe.load_lora_weights("./{folder.name}")',
                        f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config, **{options!r})"),
                 draws=draws, arguments=(*steps, *guidance, *((k, repr(v)) for k, v in (call_options or {}).items())))
    with atomic_dir(folder) as tmp:
        getattr(diffusers, saver).save_lora_weights(tmp, **{f"{prefix}_lora_layers": layers,
                                                           f"{prefix}_lora_adapter_metadata": metadata})
        write_model_card(tmp, base_model=base_model, recipe=recipe, metrics={}, pipeline_call=call.render(),
                         tags=["lora", *tags], pipeline_tag="text-to-image")
        write_record(tmp, record)
    return folder
