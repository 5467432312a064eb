"""A few-step class-conditional student distilled with stepdistill. Needs only torch and diffusers.

    pipe = DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)
    images = pipe(class_labels=[3, 7], generator=torch.Generator().manual_seed(0)).images

Sampling, one network evaluation per timestep of `pipe.config.timesteps` (descending, t_0 first), or of K
times of the distillation grid with `num_inference_steps=K`:
    z = randn_tensor((B, C, H, W), generator=generator)   # float32; a CPU generator draws on the CPU
    x = sqrt(1 - alphas_cumprod[t_0]) * z
    for t in timesteps:                                    # LCMScheduler.step:
        x0 = x0 from unet(x, t, class_labels=y) for the scheduler's prediction_type  # unclipped, as trained
        x = x0 on the last step, else sqrt(abar_next) x0 + sqrt(1 - abar_next) eps, eps drawn from `generator`
The saved LCMScheduler's timestep_scaling makes LCM's boundary condition (c_skip, c_out) = (0, 1) for t >= 1,
or is LCM's own 10 for a consistency student (denoised = c_skip x + c_out x0, as it was trained). A student
sampled with TCD's gamma (`pipe.config.gamma`; 0 for multistep-consistency segments) saves a TCDScheduler
instead, whose step is a DDIM jump on x0 to (1 - gamma) t_next and fresh noise up to t_next.
Images: output_type "pil" (default), "np" (B, H, W, C) or "pt" (B, C, H, W), in [0, 1] as usual in diffusers.

Several students (multi-student distillation): `unet` is student 0 and `unet_1` ... `unet_7` the others;
`pipe.config.owner[label]` names the student that owns each class. Each student samples its own labels, in
student order, from the one `generator` (as stepdistill's RoutedStudent does), and the images come back in
the order of `class_labels`.
"""
import json
import os
import shutil

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

PIPELINE_MODULE = "stepdistill_pipeline"  # the file name an exported folder holds this code under


MAX_STUDENTS = 8
EXTRA_STUDENTS = [f"unet_{k}" for k in range(1, MAX_STUDENTS)]


class StepDistillClassConditionalPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet"
    _optional_components = EXTRA_STUDENTS

    def __init__(self, unet, scheduler, timesteps=(999,), null_label=None, gamma=None, owner=None,
                 unet_1=None, unet_2=None, unet_3=None, unet_4=None, unet_5=None, unet_6=None, unet_7=None):
        super().__init__()
        extra = dict(zip(EXTRA_STUDENTS, (unet_1, unet_2, unet_3, unet_4, unet_5, unet_6, unet_7)))
        self.register_modules(unet=unet, scheduler=scheduler, **extra)
        self.register_to_config(timesteps=[int(t) for t in timesteps], null_label=null_label, gamma=gamma,
                                owner=None if owner is None else [int(o) for o in owner])
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)  # [-1, 1] -> [0, 1]

    def student(self, k):
        return self.unet if k == 0 else getattr(self, f"unet_{k}")

    @torch.no_grad()
    def __call__(self, class_labels=None, num_images=1, generator=None, output_type="pil", return_dict=True,
                 num_inference_steps=None):
        """class_labels: an int, a list of ints or a LongTensor, one image each. None: `num_images` images
        with the null label (unconditional), or with no label at all for a model without class embeddings.
        num_inference_steps: None runs the student's own `timesteps`; K runs K times of the scheduler's
        distillation grid (`original_inference_steps` levels), picked as LCMScheduler does."""
        device = self._execution_device
        if class_labels is None:
            labels = None if self.config.null_label is None else torch.full((num_images,), self.config.null_label)
        else:
            labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if labels is not None:
            labels, num_images = labels.to(device), len(labels)
        timesteps = self.config.timesteps
        if num_inference_steps is not None:  # LCM's rule: K of the distillation grid, evenly by index
            n = self.scheduler.config.original_inference_steps
            k = self.scheduler.config.num_train_timesteps // n
            grid = [(i + 1) * k - 1 for i in reversed(range(n))]
            timesteps = [grid[int(j)] for j in np.floor(np.linspace(0, n, num_inference_steps, endpoint=False))]
        owner = self.config.get("owner")
        if owner is None or labels is None:  # one student (or no labels: student 0)
            x = self._sample(self.unet, labels, num_images, timesteps, generator, device)
        else:
            which = torch.tensor(owner, device=device)[labels.clamp(min=0)]
            x = None
            for k in range(max(owner) + 1):  # each student its own labels, in student order
                mine = (which == k).nonzero().flatten()
                if len(mine):
                    out = self._sample(self.student(k), labels[mine], len(mine), timesteps, generator, device)
                    x = out.new_zeros((num_images, *out.shape[1:])) if x is None else x
                    x[mine] = out
        images = self.image_processor.postprocess(x, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _sample(self, unet, labels, num_images, timesteps, generator, device):
        cfg = unet.config
        z = randn_tensor((num_images, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator,
                         device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(timesteps=timesteps, device=device)
        step_kwargs = {} if self.config.gamma is None else {"eta": self.config.gamma}  # TCDScheduler's gamma
        x = (1 - self.scheduler.alphas_cumprod[int(self.scheduler.timesteps[0])]).sqrt().to(device) * z
        for t in self.progress_bar(self.scheduler.timesteps):
            out = unet(x.to(unet.dtype), t, class_labels=labels).sample.float()
            x = self.scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
        return x

    def save_pretrained(self, save_directory, **kwargs):
        """Re-saving (e.g. after .to(torch.float16)) keeps the folder self-contained: this file goes with it."""
        super().save_pretrained(save_directory, **kwargs)
        name = PIPELINE_MODULE
        shutil.copyfile(__file__, os.path.join(save_directory, name + ".py"))
        path = os.path.join(save_directory, "model_index.json")
        with open(path) as f:
            index = json.load(f)
        index["_class_name"] = [name, type(self).__name__]
        index.pop("_name_or_path", None)
        with open(path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
