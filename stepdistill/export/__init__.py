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

Every export holds `student.json` (`stepdistill.sampler_spec`): how its student samples, which `eval/evaluate.py`
reads to sample the folder exactly as the student does. Weights are safetensors only; nothing is pickled. Every
folder appears in one rename (`io.atomic_dir`).

    schedulers.py     the stock schedulers, from the student's `SamplerSpec`
    folders.py        the network to save, a travelling pipeline's folder, completeness, no local paths
    card.py           the model card
    pixel.py          class-conditional (and routed) and super-resolution pipelines
    text_to_image.py  the base pipeline with the student network; prompt-routed students
    lora.py           a student's LoRA for the stock base pipeline
    students.py       one exporter per conditioner kind: what `Student.export` runs
    hub.py            upload
"""

from .card import CARD_KEYS, PROJECT_LICENSE, hub_reference, teacher_license, write_model_card
from .folders import PICKLE_SUFFIXES
from .hub import push_to_hub
from .lora import export_lora
from .pixel import (PIPELINE_CLASS, PIPELINE_FILE, PIPELINE_MODULE, SR_PIPELINE_CLASS, SR_PIPELINE_FILE,
                    SR_PIPELINE_MODULE, export_class_conditional, export_super_resolution)
from .schedulers import TIMESTEP_SCALING
from .text_to_image import (ROUTED_MAX_STUDENTS, ROUTED_PIPELINE_CLASS, ROUTED_PIPELINE_FILE, ROUTED_PIPELINE_MODULE,
                            export_routed_text_to_image, export_text_to_image)

__all__ = ["export_class_conditional", "export_super_resolution", "export_text_to_image",
           "export_routed_text_to_image", "export_lora", "write_model_card", "push_to_hub", "teacher_license",
           "hub_reference", "PIPELINE_FILE", "PIPELINE_MODULE", "PIPELINE_CLASS", "SR_PIPELINE_FILE",
           "SR_PIPELINE_MODULE", "SR_PIPELINE_CLASS", "ROUTED_PIPELINE_FILE", "ROUTED_PIPELINE_MODULE",
           "ROUTED_PIPELINE_CLASS", "ROUTED_MAX_STUDENTS", "TIMESTEP_SCALING", "CARD_KEYS", "PROJECT_LICENSE",
           "PICKLE_SUFFIXES"]
