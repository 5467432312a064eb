"""Text-to-image exports (SD 1.x / 2.x, SDXL, SD3, Flux): the base pipeline re-saved with the student network and a
stock scheduler that runs the student's steps; several students routed by prompt in one folder.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from torch import nn

from ..families import family_of_network
from ..io import atomic_dir
from .card import Usage, card_arguments, is_local
from .folders import plain_network, seal
from .schedulers import check_sigmas, check_timesteps, flow_scheduler, lcm_scheduler, one_step_scheduler

__all__ = ["ROUTED_PIPELINE_FILE", "ROUTED_PIPELINE_MODULE", "ROUTED_PIPELINE_CLASS", "ROUTED_MAX_STUDENTS",
           "STOCHASTIC_SEED", "export_text_to_image", "export_routed_text_to_image"]


# ... and the one that routes prompts among several text-to-image students
ROUTED_PIPELINE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "routed_text.py"
ROUTED_PIPELINE_MODULE = "stepdistill_routed_pipeline"
ROUTED_PIPELINE_CLASS = "StepDistillRoutedTextPipeline"
ROUTED_MAX_STUDENTS = 8
# SD3's and Flux's pipelines do not pass `generator` to `scheduler.step`: the stochastic steps' noise comes from
# torch's global generator, which a reproducible multistep call seeds.
STOCHASTIC_SEED = "torch.manual_seed(0)  # the re-noising steps draw from torch's global generator"


def export_text_to_image(folder: str | Path, base_pipeline: str | Path, net: nn.Module, *, timesteps: list,
                         model_card: dict | None = None, adapter: str | None = None,
                         scheduler_options: Mapping | None = None, call_options: Mapping | None = None,
                         record: str | None = None) -> Path:
    """Write the base pipeline with the student `net` in place of its denoiser and a stock scheduler that runs
    the student's steps.

    `base_pipeline`: a local pipeline folder (with model_index.json) or a hub id. Every other component
    (VAE, text encoders, tokenizers, ...) is loaded and re-saved as safetensors. A LoRA student is merged
    (`adapter` as in `export_class_conditional`).

    - UNet families (SD 1.x / 2.x, SDXL): an `LCMScheduler` (one step: `EulerDiscreteScheduler`, module
      docstring); `timesteps` are integers, strictly descending, in [1, num_train_timesteps).
    - flow transformers (SD3, Flux): a `FlowMatchEulerDiscreteScheduler` with shift 1 and `stochastic_sampling`,
      whose step from sigma to sigma' is the student's sampler exactly (x0 = x - sigma v, then
      (1 - sigma') x0 + sigma' z); `timesteps` are the student's times in (0, 1], passed as `sigmas=`.

    `call_options`: keyword arguments the pipeline call needs to sample as the student does (Flux's embedded
    `guidance_scale`, a short T5 `max_sequence_length`); they go into the model card's code. Load it with
    stock diffusers: `DiffusionPipeline.from_pretrained(folder)(prompt, <the card's arguments>)`.
    """
    folder = Path(folder).expanduser()
    pipe, call, card = _text_to_image_pipeline(folder, base_pipeline, net, timesteps=timesteps, model_card=model_card,
                                               adapter=adapter, scheduler_options=scheduler_options,
                                               call_options=call_options)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        index = json.loads((tmp / "model_index.json").read_text())
        index.pop("_name_or_path", None)  # the base's local path: private, and meaningless elsewhere
        seal(tmp, index, call=call, pipeline_tag="text-to-image", card=card, record=record)
    return folder


def export_routed_text_to_image(folder: str | Path, base_pipeline: str | Path, nets: list[nn.Module], *,
                                timesteps: list, prompts: list[str], owner: list[int], centroids,
                                model_card: dict | None = None, adapter: str | None = None,
                                scheduler_options: Mapping | None = None,
                                call_options: Mapping | None = None, record: str | None = None) -> Path:
    """Several text-to-image students (multi-student distillation) in one folder: `export_text_to_image`'s with
    student 0 as the denoiser, the others as `student_1` ... (at most 8 in all), and a travelling pipeline
    (`stepdistill/pipelines/routed_text.py`) that sends each training prompt to its owner (`owner[i]` owns
    `prompts[i]`) and any other prompt to the nearest of `centroids` (K, D) in the prompts' mean token states.
    Load it with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`; its call is the base
    pipeline's."""
    import torch

    folder = Path(folder).expanduser()
    centroids = torch.as_tensor(centroids, dtype=torch.float64)
    k = len(nets)
    if not 1 <= k <= ROUTED_MAX_STUDENTS or len(prompts) != len(owner) or sorted(set(owner)) != list(range(k)) \
            or tuple(centroids.shape[:1]) != (k,):
        raise ValueError(f"{k} students (at most {ROUTED_MAX_STUDENTS}) need an owner per prompt naming each of them "
                         f"and a centroid each; got {len(prompts)} prompts, owners {sorted(set(owner))}, "
                         f"centroids of shape {tuple(centroids.shape)}")
    pipe, call, card = _text_to_image_pipeline(folder, base_pipeline, nets[0], timesteps=timesteps,
                                               model_card=model_card, adapter=adapter,
                                               scheduler_options=scheduler_options, call_options=call_options)
    call = replace(call, remote_code=True)  # the routing pipeline travels with the folder
    denoiser = family_of_network(nets[0]).component
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        base_index = json.loads((tmp / "model_index.json").read_text())
        for j, net in enumerate(nets[1:], start=1):
            plain_network(net, adapter).save_pretrained(tmp / f"student_{j}", safe_serialization=True)
        shutil.copyfile(ROUTED_PIPELINE_FILE, tmp / f"{ROUTED_PIPELINE_MODULE}.py")
        components = {name: value for name, value in base_index.items()
                      if not name.startswith("_") and isinstance(value, list)}
        index = {"_class_name": [ROUTED_PIPELINE_MODULE, ROUTED_PIPELINE_CLASS],
                 "_diffusers_version": base_index["_diffusers_version"], **components,
                 **{f"student_{j}": base_index[denoiser] for j in range(1, k)},
                 "base_pipeline": base_index["_class_name"], "prompts": list(prompts),
                 "owner": [int(o) for o in owner], "centroids": centroids.tolist(),
                 "route_sequence_length": (call_options or {}).get("max_sequence_length")}
        seal(tmp, index, call=call, pipeline_tag="text-to-image", card=card, record=record)
    return folder


def _text_to_image_pipeline(folder: Path, base_pipeline: str | Path, net: nn.Module, *, timesteps: list,
                            model_card: dict | None, adapter: str | None, scheduler_options: Mapping | None,
                            call_options: Mapping | None) -> tuple:
    """The base pipeline with `net` and the student's scheduler, the card's sampling code, the card's arguments."""
    from diffusers import DiffusionPipeline

    local = is_local(base_pipeline)
    net = plain_network(net, adapter)
    family = family_of_network(net)
    component = family.component
    if local:
        base = Path(base_pipeline).expanduser()
        index_path = base / "model_index.json"
        if not index_path.is_file():
            raise ValueError(f"base pipeline folder {base} does not exist or has no model_index.json")
        if component not in json.loads(index_path.read_text()):
            raise ValueError(f"base pipeline {base} has no `{component}` component for the student's "
                             f"{type(net).__name__}")
    flow = family.flow
    if flow:
        timesteps = check_sigmas(timesteps)
    else:
        check_timesteps(timesteps, None)  # the upper bound once the base scheduler is known
    card = card_arguments(model_card, base_model=None if local else str(base_pipeline))

    pipe = DiffusionPipeline.from_pretrained(str(base_pipeline), **{component: net})
    options = dict(scheduler_options or {})
    calls = tuple((k, repr(v)) for k, v in (call_options or {}).items())
    usage = Usage(source=f'"./{folder.name}"')
    if flow:
        pipe.scheduler = flow_scheduler(pipe.scheduler.config)
        usage = usage.with_arguments(("num_inference_steps", str(len(timesteps))), ("sigmas", repr(timesteps)), *calls)
        if timesteps[0] < 1:  # the student starts from t_0 z, not the pure noise z the pipeline draws at sigma 1
            usage = replace(usage, draws=_flow_latents(timesteps[0], call_options or {}, family.packed))
            usage = usage.with_arguments(("latents", "latents"))
        if "guidance_scale" not in (call_options or {}):
            usage = usage.with_arguments(("guidance_scale", "0.0"))
        if len(timesteps) > 1:
            usage = replace(usage, draws=(*usage.draws, STOCHASTIC_SEED))
    else:
        usage, timesteps = _unet_scheduler(pipe, timesteps, options, usage, calls)
    return pipe, usage, card


def _unet_scheduler(pipe, timesteps: list[int], options: dict, usage: Usage, calls: tuple) -> tuple[Usage, list[int]]:
    """Put the LCM (multistep) or Euler (one step) scheduler on a UNet pipeline; the card's sampling code."""
    gamma = options.pop("gamma", None)
    lcm = lcm_scheduler(pipe.scheduler.config, tcd=gamma is not None, **options)
    timesteps = check_timesteps(timesteps, lcm.config.num_train_timesteps)
    sigma_0 = float((1 - lcm.alphas_cumprod[timesteps[0]]).sqrt())  # the student's first input is sigma_0 z
    pipe.scheduler = lcm if len(timesteps) > 1 else one_step_scheduler(lcm.config)
    usage = usage.with_arguments(("num_inference_steps", str(len(timesteps))),
                                 *((("eta", repr(gamma)),) if gamma is not None else ()))
    if "timesteps" in inspect.signature(type(pipe).__call__).parameters:
        usage = usage.with_arguments(("timesteps", repr(timesteps)))
    else:
        pipe.scheduler.set_timesteps(len(timesteps))  # the pipeline's only choice: is it the student's?
        if pipe.scheduler.timesteps.tolist() != timesteps:
            raise ValueError(f"{type(pipe).__name__} takes no `timesteps` argument and its LCMScheduler would run "
                             f"{pipe.scheduler.timesteps.tolist()} for {len(timesteps)} steps, not {timesteps}")
    guidance = () if any(k == "guidance_scale" for k, _ in calls) else (("guidance_scale", "0.0"),)
    usage = usage.with_arguments(*guidance, *calls)
    if len(timesteps) > 1 and abs(sigma_0 - 1) > 1e-6:  # LCMScheduler does not scale the initial noise
        usage = replace(usage, draws=(
            f"# the student starts from sigma(t_0) z = {sigma_0:.6g} z (LCMScheduler would pass z unscaled)",
            "shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)",
            f"latents = {sigma_0!r} * torch.randn(shape, generator=generator)")).with_arguments(("latents", "latents"))
    return usage, timesteps


def _flow_latents(t0: float, call_options: Mapping, packed: bool) -> tuple[str, ...]:
    """Card lines drawing the flow student's first input t_0 z (packed into 2x2 tokens for Flux)."""
    if "height" not in call_options or "width" not in call_options:
        raise ValueError("a flow student starting below t = 1 needs height and width in call_options")
    h, w = call_options["height"], call_options["width"]
    draw = f"{t0!r} * torch.randn(1, c, h, w, generator=generator)"
    sizes = f"{h} // pipe.vae_scale_factor, {w} // pipe.vae_scale_factor"
    if packed:
        return (f"# the student starts from t_0 z = {t0:.6g} z, 2x2-packed as FluxPipeline takes latents",
                f"c, h, w = pipe.transformer.config.in_channels // 4, {sizes}",
                f"latents = pipe._pack_latents({draw}, 1, c, h, w)")
    return (f"# the student starts from t_0 z = {t0:.6g} z (the pipeline would draw z at sigma 1)",
            f"c, h, w = pipe.transformer.config.in_channels, {sizes}",
            f"latents = {draw}")
