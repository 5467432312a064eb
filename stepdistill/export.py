"""Export a distilled student as a diffusers pipeline folder, write its model card, push it to the hub.

Two kinds of folder, both loadable with stock diffusers in an environment without stepdistill (DESIGN.md 1, 4):

- class-conditional pixel students (the digits teacher's family): `export_class_conditional` writes
  `unet/` + an `LCMScheduler` + `stepdistill_pipeline.py` (`stepdistill/pipelines/class_conditional.py`, a
  ~60-line pipeline that needs only torch and diffusers); model_index.json names it as
  `["stepdistill_pipeline", "<class>"]`, which diffusers resolves
  to the file inside the folder (or repo). Load with
  `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
- text-to-image students (SD 1.x / 2.x, SDXL, SD3, Flux): `export_text_to_image` re-saves every component of
  the base pipeline, the student network and a stock scheduler; `DiffusionPipeline.from_pretrained(folder)`
  then `pipe(prompt, num_inference_steps=K, guidance_scale=0, timesteps=[...])` (flow students: `sigmas=[...]`)
  samples with the student.

The student's first input is sigma(t_0) z (`roles.Generator`): exactly z only where alpha(t_0) = 0 (t = 999 of a
cosine schedule), 0.9977 z at t = 999 of SD's schedule, 0.93 z at SiD's t_0 = 625. The class-conditional
pipeline scales its noise itself. A stock text-to-image pipeline multiplies its noise by the scheduler's
`init_noise_sigma`, which is 1 for LCMScheduler: so a one-step student is exported with an
`EulerDiscreteScheduler` ("trailing" spacing), whose init_noise_sigma and `scale_model_input` give the
network sqrt(1 - abar_t0) z and whose one step to sigma = 0 returns the x0 prediction; a multistep student
keeps the LCMScheduler and its model card passes `latents = sigma(t_0) z`, which the pipeline uses as given.

Why LCMScheduler: its `step` is exactly the few-step student sampler (DMD2, SwiftBrush, consistency models):
x0 from the network output for the scheduler's prediction type, clipped, then re-noised to the next timestep
with fresh noise, `x = sqrt(abar_s) x0 + sqrt(1 - abar_s) eps`. Its consistency boundary condition
`denoised = c_out x0 + c_skip x_t` is made exact identity for every t >= 1 by a large `timestep_scaling`
(c_skip < 3e-9, c_out = 1 in float32), which is why t = 0 is not a valid student timestep here.

Weights are safetensors only; nothing is pickled. Every folder appears in one rename (`io.atomic_dir`).
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import textwrap
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from .io import atomic_dir, atomic_write_text
from .local_paths import files_with_local_paths

__all__ = ["export_class_conditional", "export_super_resolution", "export_text_to_image", "export_routed_text_to_image", "export_lora", "write_model_card", "push_to_hub",
           "PIPELINE_FILE", "PIPELINE_MODULE", "PIPELINE_CLASS"]

PIPELINE_MODULE = "stepdistill_pipeline"  # the file name diffusers imports from the folder (module cache key)
PIPELINE_CLASS = "StepDistillClassConditionalPipeline"
TIMESTEP_SCALING = 1e4  # LCM boundary condition: c_skip = 0.25 / ((1e4 t)^2 + 0.25) < 3e-9 for t >= 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CARD_KEYS = ("base_model", "recipe", "metrics", "tags", "extra", "license")
PROJECT_LICENSE = "apache-2.0"  # the shipped teachers' too: the project trained them

# The pipeline that travels inside a class-conditional export: a real module, copied into the folder.
PIPELINE_FILE = Path(__file__).resolve().parent / "pipelines" / "class_conditional.py"
# ... and the one that routes prompts among several text-to-image students
ROUTED_PIPELINE_FILE = Path(__file__).resolve().parent / "pipelines" / "routed_text.py"
ROUTED_PIPELINE_MODULE = "stepdistill_routed_pipeline"
ROUTED_PIPELINE_CLASS = "StepDistillRoutedTextPipeline"
ROUTED_MAX_STUDENTS = 8
# ... and the super-resolution one
SR_PIPELINE_FILE = Path(__file__).resolve().parent / "pipelines" / "super_resolution.py"
SR_PIPELINE_MODULE = "stepdistill_sr_pipeline"
SR_PIPELINE_CLASS = "StepDistillSuperResolutionPipeline"


# ---------------------------------------------------------------------------------------------------------------
# class-conditional students


def export_class_conditional(folder: str | Path, unet: nn.Module | list[nn.Module], scheduler_config: Mapping, *,
                             timesteps: list[int], null_label: int | None, model_card: dict | None = None,
                             adapter: str | None = None, scheduler_options: Mapping | None = None,
                             owner: list[int] | None = None) -> Path:
    """Write a self-contained diffusers pipeline folder for a class-conditional pixel-space student.

    `unet`: the student (a diffusers model, e.g. `UNet2DModel`, called `unet(x, t, class_labels=y)`); a LoRA
    student is merged first (`adapter` names the LoRA, needed only when there are several; the caller's
    network is not modified). `scheduler_config`: the teacher's VP-discrete scheduler config (DDPM family:
    betas and `prediction_type`). `timesteps`: the student's input times, strictly descending, in
    [1, num_train_timesteps). `null_label`: the label of the unconditional class, or None.
    `model_card`: keyword arguments of `write_model_card` (base_model, recipe, metrics, tags, extra).
    `scheduler_options`: LCMScheduler settings of a consistency student (`Student.scheduler_options`).
    Several students (multi-student distillation): `unet` is their list (at most 8) and `owner[label]` the
    student of each class; the pipeline routes each label to its student.

    Load it, with or without stepdistill installed:
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)(class_labels=[3, 7]).images`
    (`num_inference_steps=K` samples a consistency student in K steps of its grid.)
    """
    folder = Path(folder).expanduser()
    options = dict(scheduler_options or {})
    gamma = options.pop("gamma", None)
    # No clipping of x0 between steps: the pipeline samples exactly as the Student that was trained and measured
    # (`samplers.multistep`); the images are clipped to [0, 1] at the end, as in any diffusers pipeline.
    scheduler = _lcm_scheduler(scheduler_config, clip_sample=False, tcd=gamma is not None, **options)
    timesteps = _check_timesteps(timesteps, scheduler.config.num_train_timesteps)
    nets = [_plain_network(u, adapter) for u in (unet if isinstance(unet, (list, tuple)) else [unet])]
    if len(nets) > 1 or owner is not None:
        if owner is None or sorted(set(owner)) != list(range(len(nets))) or len(nets) > 8:
            raise ValueError(f"{len(nets)} students (at most 8) need an owner per class naming each of them; "
                             f"got owner={owner}")
    net = nets[0]
    num_classes = getattr(net.config, "num_class_embeds", None)
    if null_label is not None and (not isinstance(null_label, int) or num_classes is None
                                   or not 0 <= null_label < num_classes):
        raise ValueError(f"null_label={null_label!r} is not a class of the network "
                         f"(num_class_embeds={num_classes})")
    card = _card_arguments(model_card, base_model=None)
    call = textwrap.dedent(f"""\
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained("./{folder.name}", trust_remote_code=True)  # or the hub repo id
        images = pipe(class_labels=[0, 1, 2], generator=torch.Generator().manual_seed(0)).images""")

    names = ["unet"] + [f"unet_{k}" for k in range(1, len(nets))]
    config = {"timesteps": timesteps, "null_label": null_label, "gamma": gamma,
              **({"owner": list(owner)} if owner is not None else {})}
    return _pixel_folder(folder, dict(zip(names, nets)), scheduler, PIPELINE_FILE, PIPELINE_MODULE, PIPELINE_CLASS,
                         config, card=card, call=call)


def export_super_resolution(folder: str | Path, unet: nn.Module, scheduler_config: Mapping, *, timesteps: list[int],
                            sr_scale: int, residual: bool = False, model_card: dict | None = None,
                            adapter: str | None = None) -> Path:
    """Write a self-contained diffusers pipeline folder for a pixel-space super-resolution student (the LR image,
    bicubic-upsampled, concatenated to the network's input): `unet` + an `LCMScheduler` (the student's sampler, as
    for class-conditional students) + `stepdistill_sr_pipeline.py` (`stepdistill/pipelines/super_resolution.py`).
    Load it, with or without stepdistill installed:
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)(image=low_resolution).images`
    `residual`: the network models the residual over the upsample (`Denoiser(residual=True)`); recorded as the
    pipeline's `sr_residual`, whose sampler then runs on residuals, unclamped.
    """
    folder = Path(folder).expanduser()
    scheduler = _lcm_scheduler(scheduler_config, clip_sample=False)  # as the Student samples (export_class_conditional)
    timesteps = _check_timesteps(timesteps, scheduler.config.num_train_timesteps)
    if int(sr_scale) < 1:
        raise ValueError(f"sr_scale={sr_scale} must be >= 1")
    net = _plain_network(unet, adapter)
    card = _card_arguments(model_card, base_model=None)
    call = textwrap.dedent(f"""\
        import torch
        from diffusers import DiffusionPipeline
        from PIL import Image

        pipe = DiffusionPipeline.from_pretrained("./{folder.name}", trust_remote_code=True)  # or the hub repo id
        low_resolution = Image.open("input.png")  # the output is {int(sr_scale)}x larger
        image = pipe(image=low_resolution, generator=torch.Generator().manual_seed(0)).images[0]""")
    return _pixel_folder(folder, {"unet": net}, scheduler, SR_PIPELINE_FILE, SR_PIPELINE_MODULE, SR_PIPELINE_CLASS,
                         {"timesteps": timesteps, "sr_scale": int(sr_scale), "sr_residual": bool(residual)},
                         card=card, call=call,
                         pipeline_tag="image-to-image")


def _pixel_folder(folder: Path, nets: dict, scheduler, pipeline_file: Path, module: str, cls: str, config: dict, *,
                  card: dict, call: str, pipeline_tag: str | None = None) -> Path:
    """A travelling-pipeline folder: the networks, the scheduler, the pipeline's file, model_index.json naming it
    and carrying `config`, the model card; written in one rename."""
    import diffusers

    with atomic_dir(folder) as tmp:
        for name, each in nets.items():
            each.save_pretrained(tmp / name, safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        shutil.copyfile(pipeline_file, tmp / f"{module}.py")
        index = {"_class_name": [module, cls], "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", type(scheduler).__name__], **config,
                 **{name: ["diffusers", type(each).__name__] for name, each in nets.items()}}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        write_model_card(tmp, pipeline_call=call, pipeline_tag=pipeline_tag, **card)
        _scrub_local_paths(tmp)
        _check_complete(tmp)
    return folder


# ---------------------------------------------------------------------------------------------------------------
# text-to-image students


def export_text_to_image(folder: str | Path, base_pipeline: str | Path, net: nn.Module, *, timesteps: list,
                         model_card: dict | None = None, adapter: str | None = None,
                         scheduler_options: Mapping | None = None, call_options: Mapping | None = None) -> Path:
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
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        write_model_card(tmp, pipeline_call=call, pipeline_tag="text-to-image", **card)
        _scrub_local_paths(tmp)
        _check_complete(tmp)
    return folder


def export_routed_text_to_image(folder: str | Path, base_pipeline: str | Path, nets: list[nn.Module], *,
                                timesteps: list, prompts: list[str], owner: list[int], centroids,
                                model_card: dict | None = None, adapter: str | None = None,
                                scheduler_options: Mapping | None = None,
                                call_options: Mapping | None = None) -> Path:
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
    call = call.replace(f'from_pretrained("./{folder.name}")', f'from_pretrained("./{folder.name}", trust_remote_code=True)')
    denoiser = "unet" if "unet" in pipe.components else "transformer"
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        base_index = json.loads((tmp / "model_index.json").read_text())
        for j, net in enumerate(nets[1:], start=1):
            _plain_network(net, adapter).save_pretrained(tmp / f"student_{j}", safe_serialization=True)
        shutil.copyfile(ROUTED_PIPELINE_FILE, tmp / f"{ROUTED_PIPELINE_MODULE}.py")
        components = {name: value for name, value in base_index.items()
                      if not name.startswith("_") and isinstance(value, list)}
        index = {"_class_name": [ROUTED_PIPELINE_MODULE, ROUTED_PIPELINE_CLASS],
                 "_diffusers_version": base_index["_diffusers_version"], **components,
                 **{f"student_{j}": base_index[denoiser] for j in range(1, k)},
                 "base_pipeline": base_index["_class_name"], "prompts": list(prompts),
                 "owner": [int(o) for o in owner], "centroids": centroids.tolist(),
                 "route_sequence_length": (call_options or {}).get("max_sequence_length")}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        write_model_card(tmp, pipeline_call=call, pipeline_tag="text-to-image", **card)
        _scrub_local_paths(tmp)
        _check_complete(tmp)
    return folder


def _text_to_image_pipeline(folder: Path, base_pipeline: str | Path, net: nn.Module, *, timesteps: list,
                            model_card: dict | None, adapter: str | None, scheduler_options: Mapping | None,
                            call_options: Mapping | None) -> tuple:
    """The base pipeline with `net` and the student's scheduler, the card's sampling code, the card's arguments."""
    from diffusers import DiffusionPipeline

    local = _is_local(base_pipeline)
    net = _plain_network(net, adapter)
    component = "unet" if type(net).__name__.startswith("UNet") else "transformer"
    if local:
        base = Path(base_pipeline).expanduser()
        index_path = base / "model_index.json"
        if not index_path.is_file():
            raise ValueError(f"base pipeline folder {base} does not exist or has no model_index.json")
        if component not in json.loads(index_path.read_text()):
            raise ValueError(f"base pipeline {base} has no `{component}` component for the student's "
                             f"{type(net).__name__}")
    flow = component == "transformer"
    if flow:
        timesteps = _check_sigmas(timesteps)
    else:
        _check_timesteps(timesteps, None)  # the upper bound once the base scheduler is known
    card = _card_arguments(model_card, base_model=None if local else str(base_pipeline))

    pipe = DiffusionPipeline.from_pretrained(str(base_pipeline), **{component: net})
    options = dict(scheduler_options or {})
    extra = "".join(f", {k}={v!r}" for k, v in (call_options or {}).items())
    if flow:
        pipe.scheduler = _flow_scheduler(pipe.scheduler.config)
        steps = f"num_inference_steps={len(timesteps)}, sigmas={timesteps}" + extra
        guidance = "" if "guidance_scale" in (call_options or {}) else ", guidance_scale=0.0"
        call = _sampling_call(folder, steps + guidance)
        if timesteps[0] < 1:  # the student starts from t_0 z, not the pure noise z the pipeline draws at sigma 1
            call = call.replace("image = pipe(", _flow_latents(timesteps[0], call_options or {}, pipe) + "image = pipe(")
            call = call.replace("guidance_scale", "latents=latents, guidance_scale", 1)
        if len(timesteps) > 1:
            call = call.replace("image = pipe(", f"{STOCHASTIC_SEED}\nimage = pipe(")
    else:
        call, timesteps = _unet_scheduler(pipe, timesteps, options, folder, extra)

    return pipe, call, card


def _sampling_call(folder: Path, arguments: str) -> str:
    return textwrap.dedent(f"""\
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained("./{folder.name}")  # or the hub repo id
        image = pipe("a photo of a cat", {arguments},
                     generator=torch.Generator().manual_seed(0)).images[0]""")


def _unet_scheduler(pipe, timesteps: list[int], options: dict, folder: Path, extra: str) -> tuple[str, list[int]]:
    """Put the LCM (multistep) or Euler (one step) scheduler on a UNet pipeline; the card's sampling code."""
    gamma = options.pop("gamma", None)
    lcm = _lcm_scheduler(pipe.scheduler.config, tcd=gamma is not None, **options)
    timesteps = _check_timesteps(timesteps, lcm.config.num_train_timesteps)
    sigma_0 = float((1 - lcm.alphas_cumprod[timesteps[0]]).sqrt())  # the student's first input is sigma_0 z
    pipe.scheduler = lcm if len(timesteps) > 1 else _one_step_scheduler(lcm.config)
    steps = f"num_inference_steps={len(timesteps)}" + ("" if gamma is None else f", eta={gamma}")
    if "timesteps" in inspect.signature(type(pipe).__call__).parameters:
        steps += f", timesteps={timesteps}"
    else:
        pipe.scheduler.set_timesteps(len(timesteps))  # the pipeline's only choice: is it the student's?
        if pipe.scheduler.timesteps.tolist() != timesteps:
            raise ValueError(f"{type(pipe).__name__} takes no `timesteps` argument and its LCMScheduler would run "
                             f"{pipe.scheduler.timesteps.tolist()} for {len(timesteps)} steps, not {timesteps}")
    call = _sampling_call(folder, f"{steps}, guidance_scale=0.0{extra}")
    if len(timesteps) > 1 and abs(sigma_0 - 1) > 1e-6:  # LCMScheduler does not scale the initial noise
        call = textwrap.dedent(f"""\
            import torch
            from diffusers import DiffusionPipeline

            pipe = DiffusionPipeline.from_pretrained("./{folder.name}")  # or the hub repo id
            # the student starts from sigma(t_0) z = {sigma_0:.6g} z (LCMScheduler would pass z unscaled)
            shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
            latents = {sigma_0!r} * torch.randn(shape, generator=torch.Generator().manual_seed(0))
            image = pipe("a photo of a cat", {steps}, guidance_scale=0.0{extra}, latents=latents).images[0]""")
    return call, timesteps


def _flow_latents(t0: float, call_options: Mapping, pipe) -> str:
    """Card lines drawing the flow student's first input t_0 z (packed into 2x2 tokens for Flux)."""
    if "height" not in call_options or "width" not in call_options:
        raise ValueError("a flow student starting below t = 1 needs height and width in call_options")
    h, w = call_options["height"], call_options["width"]
    draw = f"{t0!r} * torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0))"
    if type(pipe).__name__.startswith("Flux"):
        return (f"# the student starts from t_0 z = {t0:.6g} z, 2x2-packed as FluxPipeline takes latents\n"
                f"c, h, w = pipe.transformer.config.in_channels // 4, {h} // pipe.vae_scale_factor, {w} // pipe.vae_scale_factor\n"
                f"latents = pipe._pack_latents({draw}, 1, c, h, w)\n")
    return (f"# the student starts from t_0 z = {t0:.6g} z (the pipeline would draw z at sigma 1)\n"
            f"c, h, w = pipe.transformer.config.in_channels, {h} // pipe.vae_scale_factor, {w} // pipe.vae_scale_factor\n"
            f"latents = {draw}\n")


def _flow_scheduler(config: Mapping):
    """FlowMatchEulerDiscreteScheduler on the given sigmas unchanged (shift 1, no dynamic shifting: the student's
    times are already shifted) with the stochastic step: x0, then re-noised to the next sigma."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(config), shift=1.0, use_dynamic_shifting=False,
                                                       stochastic_sampling=True)


def _check_sigmas(timesteps) -> list[float]:
    ts = [float(t) for t in (timesteps or [])]
    if not ts:
        raise ValueError("timesteps is empty: give the flow student's input times, e.g. [1.0] or [1.0, 0.75, 0.5, 0.25]")
    if any(a <= b for a, b in zip(ts, ts[1:])) or not (0 < ts[-1] and ts[0] <= 1):
        raise ValueError(f"a flow student's timesteps must be strictly descending in (0, 1], got {ts}")
    return ts


# SD3's and Flux's pipelines do not pass `generator` to `scheduler.step`: the stochastic steps' noise comes from
# torch's global generator, which a reproducible multistep call seeds.
STOCHASTIC_SEED = "torch.manual_seed(0)  # the re-noising steps draw from torch's global generator"

# The pipeline class whose `save_lora_weights` writes a student network's LoRA, and the keyword naming its layers.
_LORA_SAVERS = {"SD3Transformer2DModel": ("StableDiffusion3Pipeline", "transformer"),
                "FluxTransformer2DModel": ("FluxPipeline", "transformer")}


def export_lora(folder: str | Path, net: nn.Module, adapter: str, *, timesteps: list,
                scheduler_options: Mapping | None = None, base_model: str | None = None,
                call_options: Mapping | None = None, recipe: str = "consistency_distill") -> Path:
    """Write LoRA `adapter` of a text-to-image student's network in diffusers' LoRA format
    (`pytorch_lora_weights.safetensors`, with peft's adapter config as metadata), as LCM-LoRA and DMD2's SDXL
    LoRA are published: on the stock base pipeline with the student's scheduler,

        pipe.load_lora_weights(folder); pipe.scheduler = <Scheduler>.from_config(pipe.scheduler.config, ...)

    samples as the student does (the LoRA's model card holds the exact lines). UNet students (SD, SDXL) use an
    LCMScheduler (TCDScheduler with TCD's gamma), flow transformers (SD3, Flux) the stochastic
    FlowMatchEulerDiscreteScheduler of `export_text_to_image`."""
    import diffusers
    from peft.utils import get_peft_model_state_dict

    from .adapters import adapter_names

    folder = Path(folder).expanduser()
    for wrapper in ("_orig_mod", "module", "_orig_mod"):
        inner = getattr(net, wrapper, None)
        net = inner if isinstance(inner, nn.Module) else net
    if adapter not in adapter_names(net):
        raise ValueError(f"the network has no LoRA adapter {adapter!r}")
    saver, prefix = _LORA_SAVERS.get(type(net).__name__, ("StableDiffusionPipeline", "unet"))
    # peft's own key names (lora_A / lora_B), which the loader reads as they are, with the adapter's config
    layers = get_peft_model_state_dict(net, adapter_name=adapter)
    metadata = net.peft_config[adapter].to_dict()  # rank, alpha, targets: loaders rebuild the adapter from it
    options = dict(scheduler_options or {})
    extra = "".join(f", {k}={v!r}" for k, v in (call_options or {}).items())
    guidance = "" if "guidance_scale" in (call_options or {}) else ", guidance_scale=0.0"
    if prefix == "transformer":
        scheduler = "FlowMatchEulerDiscreteScheduler"
        options = {"shift": 1.0, "use_dynamic_shifting": False, "stochastic_sampling": True}
        steps = f"num_inference_steps={len(timesteps)}, sigmas={_check_sigmas(timesteps)}"

    else:
        gamma = options.pop("gamma", None)  # a student sampled with TCD's gamma: TCDScheduler, eta = gamma
        scheduler = "LCMScheduler" if gamma is None else "TCDScheduler"
        steps = f"num_inference_steps={len(timesteps)}" + ("" if gamma is None else f", eta={gamma}")
    base = repr(base_model) if base_model else "BASE_MODEL"
    where = "the base model it was distilled from" if base_model else "the teacher it was distilled from"
    call = textwrap.dedent(f"""\
        import torch
        from diffusers import DiffusionPipeline, {scheduler}

        pipe = DiffusionPipeline.from_pretrained({base})  # {where}
        pipe.load_lora_weights("./{folder.name}")
        pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config, **{options!r})
        image = pipe("a photo of a cat", {steps}{guidance}{extra},
                     generator=torch.Generator().manual_seed(0)).images[0]""")
    if prefix == "transformer" and len(timesteps) > 1:
        call = call.replace("image = pipe(", f"{STOCHASTIC_SEED}\nimage = pipe(")
    with atomic_dir(folder) as tmp:
        getattr(diffusers, saver).save_lora_weights(tmp, **{f"{prefix}_lora_layers": layers,
                                                           f"{prefix}_lora_adapter_metadata": metadata})
        write_model_card(tmp, base_model=base_model, recipe=recipe, metrics={}, pipeline_call=call,
                         tags=["lora"] + (["lcm-lora"] if recipe == "consistency_distill" else []),
                         pipeline_tag="text-to-image")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# model card and upload


def write_model_card(folder: str | Path, *, base_model: str | None, recipe: str, metrics: Mapping,
                     pipeline_call: str, tags: list[str] | None = None, extra: str = "",
                     pipeline_tag: str | None = None, license: str | None = None) -> Path:
    """Write `folder/README.md`: YAML front matter (library_name diffusers, license, base_model, tags,
    pipeline_tag), a description, the exact loading/sampling code, a metrics table. `base_model` None (e.g.
    a local teacher) is left out; `license` None is written as `other` with a line saying the teacher's
    license applies (a student is a derivative of its teacher)."""
    from huggingface_hub import ModelCard, ModelCardData

    tags = list(dict.fromkeys(["stepdistill", "diffusion-distillation", recipe, *(tags or [])]))
    data = ModelCardData(library_name="diffusers", license=license or "other", base_model=base_model or None,
                         tags=tags, pipeline_tag=pipeline_tag)
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items())
    table = f"| metric | value |\n|---|---|\n{rows}" if metrics else "No metrics were recorded."
    origin = f"`{base_model}`" if base_model else "its teacher"
    body = (f"# {recipe} student\n\n"
            f"A few-step student distilled from {origin} with the `{recipe}` recipe of "
            f"stepdistill. It loads with stock `diffusers`; "
            f"stepdistill is not needed.\n\n"
            f"## Usage\n\n```python\n{pipeline_call}\n```\n\n## Metrics\n\n{table}\n")
    if extra:
        body += f"\n{extra.strip()}\n"
    if not license:
        body += f"\n## License\n\nThe license of {origin} applies to this student.\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path


def push_to_hub(folder: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
                commit_message: str = "Upload distilled student (stepdistill)") -> str:
    """Create `repo_id` (if needed) and upload the exported `folder`; return the repo URL.

    Refuses, before any network call, a folder that is not a complete export (model_index.json, every component
    folder it names, safetensors weights), one that holds a pickle (*.bin, *.pt, *.pkl, ...), and one in
    which any file contains the token (given, or the one huggingface_hub would use) or a path of this machine
    (`local_paths`).
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder).expanduser()
    _check_complete(folder)
    secret = token or get_token()
    if secret:
        leaks = [str(p.relative_to(folder)) for p in sorted(folder.rglob("*")) if p.is_file() and _contains(p, secret)]
        if leaks:
            raise ValueError(f"refusing to upload {folder}: the hub token appears in {', '.join(leaks)}")
    local = files_with_local_paths(folder)
    if local:
        shown = "; ".join(f"{f}: {', '.join(paths[:2])}" for f, paths in list(local.items())[:3])
        raise ValueError(f"refusing to upload {folder}: paths of this machine appear in it ({shown}); remove them "
                         f"or replace them with names")
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message, repo_type="model")
    return str(url)


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _lcm_scheduler(config: Mapping, *, tcd: bool = False, **overrides):
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


def _one_step_scheduler(lcm_config: Mapping):
    """A stock EulerDiscreteScheduler on the same schedule that runs a one-step student exactly: with
    "trailing" spacing its init_noise_sigma is sigma_VE(t_0) = sqrt((1 - abar) / abar) and `scale_model_input`
    divides by sqrt(sigma_VE^2 + 1), so the network sees sqrt(1 - abar_t0) z, the generator's input; its
    Euler step to sigma = 0 returns the x0 prediction (deterministic, no clipping, as LCMScheduler here)."""
    from diffusers import EulerDiscreteScheduler

    accepted = set(inspect.signature(EulerDiscreteScheduler.__init__).parameters) - {"self"}
    config = {k: v for k, v in dict(lcm_config).items() if k in accepted}
    config.update(timestep_spacing="trailing", final_sigmas_type="zero", use_karras_sigmas=False)
    return EulerDiscreteScheduler.from_config(config)


def _check_timesteps(timesteps, num_train_timesteps: int | None) -> list[int]:
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


def _plain_network(net: nn.Module, adapter: str | None) -> nn.Module:
    """The network to save: unwrapped (DDP `.module`, torch.compile `_orig_mod`) and, if it carries peft LoRA
    layers, a copy with LoRA `adapter` merged into the base weights and every tuner layer replaced by its base."""
    from diffusers import ModelMixin
    from peft.tuners.tuners_utils import BaseTunerLayer

    from .adapters import adapter_names

    for wrapper in ("_orig_mod", "module", "_orig_mod"):  # torch.compile(DDP(compile(net)))
        inner = getattr(net, wrapper, None)
        net = inner if isinstance(inner, nn.Module) else net
    if not isinstance(net, ModelMixin):
        raise TypeError(f"the student must be a diffusers model (ModelMixin), got {type(net).__name__}")
    names = sorted(adapter_names(net))
    if not names:
        if adapter is not None:
            raise ValueError(f"adapter={adapter!r} was given but the network has no LoRA adapter")
        return net
    if adapter is None and len(names) > 1:
        raise ValueError(f"the network has LoRA adapters {names}: pass adapter=<name> to choose the student's")
    adapter = adapter or names[0]
    if adapter not in names:
        raise ValueError(f"the network has no LoRA adapter {adapter!r}; it has {names}")
    net = copy.deepcopy(net)  # the caller keeps training its adapters
    for name, layer in [(n, m) for n, m in net.named_modules() if isinstance(m, BaseTunerLayer)]:
        layer.merge(adapter_names=[adapter])
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(net, "peft_config"):
        del net.peft_config
    return net


def teacher_license(teacher: str) -> str | None:
    """The license a student inherits: the project's for its shipped teachers, else the `license` in the
    teacher folder's (or cached hub repo's) model card front matter; None when unknown."""
    from .teachers import shipped_folder

    if shipped_folder(teacher) is not None:
        return PROJECT_LICENSE
    readme = Path(teacher).expanduser() / "README.md"
    if not readme.is_file() and hub_reference(teacher):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(teacher, "README.md")
        readme = Path(cached) if isinstance(cached, str) else readme
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.license or None


def hub_reference(source) -> str | None:
    """The teacher as a model card may name it: a hub id (`org/name`, not a local path) or None, so that an
    export never carries a local folder's path (private, and meaningless elsewhere)."""
    s = str(source)
    return None if _is_local(source) or "/" not in s else s


def _scrub_local_paths(folder: Path) -> None:
    """Drop `_name_or_path` entries that name a local folder from every JSON config of an export: diffusers
    and transformers record where a component was loaded from."""
    for path in folder.rglob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and "_name_or_path" in data and (
                data["_name_or_path"] is None or hub_reference(data["_name_or_path"]) is None):
            del data["_name_or_path"]
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _card_arguments(model_card: dict | None, *, base_model: str | None) -> dict:
    card = dict(model_card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model_card keys {unknown}; valid: {', '.join(CARD_KEYS)}")
    card.setdefault("base_model", base_model)
    card.setdefault("recipe", "distilled")
    card.setdefault("metrics", {})
    return card


def _is_local(base: str | Path) -> bool:
    """A Path, an existing path, or anything spelled like a path (not `org/name`) is a local folder."""
    s = str(base)
    return isinstance(base, Path) or os.path.exists(s) or s.startswith((".", "/", "~")) or s.count("/") > 1 \
        or os.sep != "/" and os.sep in s


def _check_complete(folder: Path) -> None:
    """A complete, pickle-free export: model_index.json, every component folder it names, safetensors weights."""
    index_path = folder / "model_index.json"
    if not folder.is_dir() or not index_path.is_file():
        raise ValueError(f"{folder} is not an exported pipeline: no model_index.json")
    index = json.loads(index_path.read_text())
    missing = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
               and all(isinstance(s, str) for s in v) and not (folder / k).is_dir()]
    if missing:
        raise ValueError(f"{folder} is incomplete: model_index.json names {missing} but those folders are missing")
    files = [p for p in folder.rglob("*") if p.is_file()]
    pickles = [str(p.relative_to(folder)) for p in files if p.name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(f"{folder} holds pickled files {pickles}; weights must be safetensors only")
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{folder} has no *.safetensors weights")


def _contains(path: Path, secret: str, chunk: int = 1 << 24) -> bool:
    """Whether the file's text contains `secret`. Every file is read (in chunks that overlap by len(secret) - 1)
    but safetensors files, of which only the JSON header (with any metadata) is text."""
    needle, tail = secret.encode(), b""
    with open(path, "rb") as f:
        if path.suffix == ".safetensors":
            return needle in f.read(min(int.from_bytes(f.read(8), "little"), 1 << 27))
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-(len(needle) - 1):] if len(needle) > 1 else b""
    return False


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
