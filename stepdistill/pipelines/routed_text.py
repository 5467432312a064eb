"""Text-to-image students of multi-student distillation, distilled with stepdistill, in one folder. Needs only torch
and diffusers.

    pipe = DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)
    images = pipe(["a red circle", "a blue square"], num_inference_steps=1, guidance_scale=0.0,
                  generator=torch.Generator().manual_seed(0)).images

The folder is the base pipeline's (`pipe.config.base_pipeline`, e.g. StableDiffusionPipeline) with student 0 as its
`unet` or `transformer` and the other students as `student_1` ... `student_7`. Routing: a prompt the students were
trained on goes to the student that owned it (`pipe.config.prompts`, `pipe.config.owner`); any other prompt to the
student whose centroid is nearest (`pipe.config.centroids`, the mean embedding of each student's prompts). A prompt's
embedding is the mean over tokens of the base pipeline's `encode_prompt` states (at the training's T5 length,
`pipe.config.route_sequence_length`, where there is one), the space the prompts were partitioned in.

Each student runs the stock base pipeline on its own prompts, in student order, from the one `generator` (and its
rows of `latents`, if given); the images come back in prompt order. Every other argument goes to the base pipeline.
"""
import inspect
import json
import os
import shutil

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput

PIPELINE_MODULE = "stepdistill_routed_pipeline"  # the file name an exported folder holds this code under
MAX_STUDENTS = 8
EXTRA_STUDENTS = [f"student_{k}" for k in range(1, MAX_STUDENTS)]
BASE_COMPONENTS = ["vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3",
                   "tokenizer_3", "unet", "transformer", "safety_checker", "feature_extractor", "image_encoder"]


class StepDistillRoutedTextPipeline(DiffusionPipeline):
    _optional_components = BASE_COMPONENTS + EXTRA_STUDENTS

    def __init__(self, scheduler, vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                 text_encoder_3=None, tokenizer_3=None, unet=None, transformer=None, safety_checker=None,
                 feature_extractor=None, image_encoder=None, student_1=None, student_2=None, student_3=None,
                 student_4=None, student_5=None, student_6=None, student_7=None,
                 base_pipeline="StableDiffusionPipeline", prompts=(), owner=(), centroids=(),
                 route_sequence_length=None):
        super().__init__()
        base = dict(zip(BASE_COMPONENTS, (vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, text_encoder_3,
                                          tokenizer_3, unet, transformer, safety_checker, feature_extractor,
                                          image_encoder)))
        extra = dict(zip(EXTRA_STUDENTS, (student_1, student_2, student_3, student_4, student_5, student_6,
                                          student_7)))
        self.register_modules(scheduler=scheduler, **base, **extra)
        if len(prompts) != len(owner) or not centroids:
            raise ValueError("a routed pipeline needs an owner per prompt and a centroid per student")
        self.register_to_config(base_pipeline=base_pipeline, prompts=list(prompts), owner=[int(o) for o in owner],
                                centroids=[[float(v) for v in c] for c in centroids],
                                route_sequence_length=route_sequence_length)

    @property
    def num_students(self):
        return len(self.config.centroids)

    def student(self, k):
        return (self.unet if self.unet is not None else self.transformer) if k == 0 else getattr(self, f"student_{k}")

    def base(self, k=0):
        """The stock base pipeline with student k as its denoiser (the other components shared, not copied)."""
        cls = getattr(diffusers, self.config.base_pipeline)
        expected, optional = cls._get_signature_keys(cls)
        parts = {name: getattr(self, name, None) for name in expected if name in BASE_COMPONENTS + ["scheduler"]}
        parts["unet" if self.unet is not None else "transformer"] = self.student(k)
        if "requires_safety_checker" in optional:
            parts["requires_safety_checker"] = False
        pipe = cls(**parts)
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @property
    def vae_scale_factor(self):  # what model cards' latent-drawing lines read from the pipeline
        return self.base(0).vae_scale_factor

    def _pack_latents(self, *args):  # Flux's 2x2 packing, for latents drawn outside the call
        return self.base(0)._pack_latents(*args)

    @torch.no_grad()
    def embed(self, prompts):
        """(B, D): the mean over tokens of the base pipeline's prompt states, no guidance branch."""
        base = self.base(0)
        params = inspect.signature(base.encode_prompt).parameters
        wanted = {"device": self._execution_device, "num_images_per_prompt": 1, "do_classifier_free_guidance": False,
                  "prompt_2": None, "prompt_3": None}
        if self.config.route_sequence_length is not None:
            wanted["max_sequence_length"] = self.config.route_sequence_length
        states = base.encode_prompt(prompts, **{k: v for k, v in wanted.items() if k in params})[0]
        return states.float().mean(1)

    def route(self, prompts):
        """The student of each prompt: its owner if it is a training prompt, else the nearest centroid's."""
        known = dict(zip(self.config.prompts, self.config.owner))
        unknown = list(dict.fromkeys(p for p in prompts if p not in known))
        if unknown:
            centroids = torch.tensor(self.config.centroids, dtype=torch.float64)
            nearest = torch.cdist(self.embed(unknown).double().cpu(), centroids).argmin(1).tolist()
            known.update(zip(unknown, nearest))
        return [known[p] for p in prompts]

    @torch.no_grad()
    def __call__(self, prompt, num_images_per_prompt=1, generator=None, latents=None, output_type="pil",
                 return_dict=True, **kwargs):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        which = self.route(prompts)
        images = [None] * len(prompts)
        for k in range(self.num_students):  # each student its own prompts, in student order
            mine = [i for i, w in enumerate(which) if w == k]
            if not mine:
                continue
            rows = {} if latents is None else {"latents": latents[mine]}
            out = self.base(k)([prompts[i] for i in mine], generator=generator, output_type=output_type,
                               **rows, **kwargs).images
            for j, i in enumerate(mine):
                images[i] = out[j]
        if output_type == "pt":
            images = torch.stack(images)
        elif output_type in ("np", "latent"):
            images = np.stack(images) if isinstance(images[0], np.ndarray) else torch.stack(images)
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
