"""Self-contained pixel-space exports: a class-conditional (or routed) pipeline and a super-resolution one, each
with its travelling pipeline file (`stepdistill/pipelines/`), loadable with `trust_remote_code=True` in an
environment without stepdistill.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from .card import Usage, card_arguments
from .folders import pixel_folder, plain_network
from .schedulers import check_timesteps, lcm_scheduler

__all__ = ["PIPELINE_MODULE", "PIPELINE_CLASS", "PIPELINE_FILE", "SR_PIPELINE_FILE", "SR_PIPELINE_MODULE",
           "SR_PIPELINE_CLASS", "export_class_conditional", "export_super_resolution"]


PIPELINE_MODULE = "stepdistill_pipeline"  # the file name diffusers imports from the folder (module cache key)
PIPELINE_CLASS = "StepDistillClassConditionalPipeline"
# The pipeline that travels inside a class-conditional export: a real module, copied into the folder.
PIPELINE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "class_conditional.py"
# ... and the super-resolution one
SR_PIPELINE_FILE = Path(__file__).resolve().parents[1] / "pipelines" / "super_resolution.py"
SR_PIPELINE_MODULE = "stepdistill_sr_pipeline"
SR_PIPELINE_CLASS = "StepDistillSuperResolutionPipeline"


def export_class_conditional(folder: str | Path, unet: nn.Module | list[nn.Module], scheduler_config: Mapping, *,
                             timesteps: list[int], null_label: int | None, model_card: dict | None = None,
                             adapter: str | None = None, scheduler_options: Mapping | None = None,
                             owner: list[int] | None = None, record: str | None = None) -> Path:
    """Write a self-contained diffusers pipeline folder for a class-conditional pixel-space student.

    `unet`: the student (a diffusers model, e.g. `UNet2DModel`, called `unet(x, t, class_labels=y)`); a LoRA
    student is merged first (`adapter` names the LoRA, needed only when there are several; the caller's
    network is not modified). `scheduler_config`: the teacher's VP-discrete scheduler config (DDPM family:
    betas and `prediction_type`). `timesteps`: the student's input times, strictly descending, in
    [1, num_train_timesteps). `null_label`: the label of the unconditional class, or None.
    `model_card`: keyword arguments of `write_model_card` (base_model, recipe, metrics, tags, extra).
    `scheduler_options`: LCMScheduler settings of a consistency student (`SamplerSpec.scheduler_options`).
    `record`: the text of `student.json` (`sampler_spec.student_record`), written into the folder.
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
    scheduler = lcm_scheduler(scheduler_config, clip_sample=False, tcd=gamma is not None, **options)
    timesteps = check_timesteps(timesteps, scheduler.config.num_train_timesteps)
    nets = [plain_network(u, adapter) for u in (unet if isinstance(unet, (list, tuple)) else [unet])]
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
    card = card_arguments(model_card, base_model=None)
    call = Usage(source=f'"./{folder.name}"', remote_code=True, inputs=(),
                 arguments=(("class_labels", "[0, 1, 2]"),), result="images")

    names = ["unet"] + [f"unet_{k}" for k in range(1, len(nets))]
    config = {"timesteps": timesteps, "null_label": null_label, "gamma": gamma,
              **({"owner": list(owner)} if owner is not None else {})}
    return pixel_folder(folder, dict(zip(names, nets)), scheduler, PIPELINE_FILE, PIPELINE_MODULE, PIPELINE_CLASS,
                         config, card=card, call=call, record=record)


def export_super_resolution(folder: str | Path, unet: nn.Module, scheduler_config: Mapping, *, timesteps: list[int],
                            sr_scale: int, residual: bool = False, model_card: dict | None = None,
                            adapter: str | None = None, record: str | None = None) -> Path:
    """Write a self-contained diffusers pipeline folder for a pixel-space super-resolution student (the LR image,
    bicubic-upsampled, concatenated to the network's input): `unet` + an `LCMScheduler` (the student's sampler, as
    for class-conditional students) + `stepdistill_sr_pipeline.py` (`stepdistill/pipelines/super_resolution.py`).
    Load it, with or without stepdistill installed:
        `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)(image=low_resolution).images`
    `residual`: the network models the residual over the upsample (`Denoiser(residual=True)`); recorded as the
    pipeline's `sr_residual`, whose sampler then runs on residuals, unclamped.
    """
    folder = Path(folder).expanduser()
    scheduler = lcm_scheduler(scheduler_config, clip_sample=False)  # as the Student samples (export_class_conditional)
    timesteps = check_timesteps(timesteps, scheduler.config.num_train_timesteps)
    if int(sr_scale) < 1:
        raise ValueError(f"sr_scale={sr_scale} must be >= 1")
    net = plain_network(unet, adapter)
    card = card_arguments(model_card, base_model=None)
    call = Usage(source=f'"./{folder.name}"', remote_code=True, imports=("from PIL import Image",),
                 setup=(f'low_resolution = Image.open("input.png")  # the output is {int(sr_scale)}x larger',),
                 inputs=(), arguments=(("image", "low_resolution"),))
    return pixel_folder(folder, {"unet": net}, scheduler, SR_PIPELINE_FILE, SR_PIPELINE_MODULE, SR_PIPELINE_CLASS,
                         {"timesteps": timesteps, "sr_scale": int(sr_scale), "sr_residual": bool(residual)},
                         card=card, call=call, pipeline_tag="image-to-image", record=record)
