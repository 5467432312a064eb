"""A few-step super-resolution student distilled with stepdistill. Needs only torch and diffusers.

    pipe = DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)
    images = pipe(image=low_resolution, generator=torch.Generator().manual_seed(0)).images

`image`: a PIL image, a list of them, or a float tensor (B, 3, h, w) in [0, 1]; the output is `pipe.config.sr_scale`
times larger. Sampling, one network evaluation per timestep of `pipe.config.timesteps` (descending, t_0 first):
    y = clamp(bicubic(2 image - 1, scale x), -1, 1)        # the condition, on the output grid
    z = randn_tensor((B, 3, H, W), generator=generator)    # float32; a CPU generator draws on the CPU
    x = sqrt(1 - alphas_cumprod[t_0]) * z
    for t in timesteps:                                    # LCMScheduler.step:
        x0 = x0 from unet(cat([x, y]), t) for the scheduler's prediction_type   # unclipped, as trained
        x = x0 on the last step, else sqrt(abar_next) x0 + sqrt(1 - abar_next) eps, eps drawn from `generator`
With `pipe.config.sr_residual` the unet models the residual over y (SRDiff): the same loop runs on r = x - sqrt(abar_t) y,
the noised residual (unet(cat([r, y]), t)), and the image is y + the last step's r.
Images: output_type "pil" (default), "np" (B, H, W, C) or "pt" (B, C, H, W), in [0, 1] as usual in diffusers.
"""
import json
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

PIPELINE_MODULE = "stepdistill_sr_pipeline"  # the file name an exported folder holds this code under


class StepDistillSuperResolutionPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "unet"

    def __init__(self, unet, scheduler, timesteps=(999,), sr_scale=4, sr_residual=False):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(timesteps=[int(t) for t in timesteps], sr_scale=int(sr_scale),
                                sr_residual=bool(sr_residual))
        self.image_processor = VaeImageProcessor(vae_scale_factor=1, do_normalize=True)  # [-1, 1] -> [0, 1]

    def condition(self, image, device):
        """(B, 3, H, W) in [-1, 1]: the low-resolution image(s), bicubic-upsampled to the output grid."""
        if isinstance(image, torch.Tensor):
            low = image.float()
            low = low[None] if low.ndim == 3 else low
        else:
            images = image if isinstance(image, (list, tuple)) else [image]
            low = torch.from_numpy(np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images]))
            low = low.permute(0, 3, 1, 2)
        low = low.to(device) * 2 - 1
        size = (low.shape[-2] * self.config.sr_scale, low.shape[-1] * self.config.sr_scale)
        return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)

    @torch.no_grad()
    def __call__(self, image, generator=None, output_type="pil", return_dict=True):
        device = self._execution_device
        y = self.condition(image, device)
        z = randn_tensor((y.shape[0], self.unet.config.out_channels, *y.shape[-2:]), generator=generator,
                         device=device, dtype=torch.float32)
        self.scheduler.set_timesteps(timesteps=self.config.timesteps, device=device)
        abar = self.scheduler.alphas_cumprod[int(self.scheduler.timesteps[0])].to(device)
        x = (1 - abar).sqrt() * z
        if self.config.sr_residual:  # the noised residual; linear re-noising keeps each step's x in that space
            x = x - abar.sqrt() * y
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self.unet(torch.cat([x, y], dim=1).to(self.unet.dtype), t).sample.float()
            x = self.scheduler.step(out, t, x, generator=generator).prev_sample
        if self.config.sr_residual:
            x = y + x
        images = self.image_processor.postprocess(x, output_type=output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def save_pretrained(self, save_directory, **kwargs):
        """Re-saving (e.g. after .to(torch.float16)) keeps the folder self-contained: this file goes with it."""
        super().save_pretrained(save_directory, **kwargs)
        shutil.copyfile(__file__, os.path.join(save_directory, PIPELINE_MODULE + ".py"))
        path = os.path.join(save_directory, "model_index.json")
        with open(path) as f:
            index = json.load(f)
        index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
        index.pop("_name_or_path", None)
        with open(path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
