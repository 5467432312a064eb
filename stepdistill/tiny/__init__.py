"""Tiny, randomly initialised text-to-image pipelines of the real families, built locally with no download.

The text-to-image recipes need teachers of the families users distil to exercise the real latent,
text-encoder, guidance, LoRA and export code paths; no machine here reaches a model hub, so these are written
from scratch (DESIGN.md, section 5). Quality is irrelevant; each folder has its family's pipeline class,
component classes, config keys and geometry (a VAE that downsamples by 8, 77-token CLIP prompts, the real
schedulers), at a size that loads and samples in about a second on CPU. 64x64 images, 8x8x4 latents:

| family | pipeline                  | denoiser                                         | text encoders                             |
|--------|---------------------------|--------------------------------------------------|-------------------------------------------|
| `sd15` | StableDiffusionPipeline   | UNet2DConditionModel, channels (32, 64)          | CLIPTextModel (width 32)                  |
| `sdxl` | StableDiffusionXLPipeline | UNet2DConditionModel, text_time added embedding  | CLIPTextModel + CLIPTextModelWithProjection |
| `sd3`  | StableDiffusion3Pipeline  | SD3Transformer2DModel, 2 joint blocks, patch 1   | 2 x CLIPTextModelWithProjection + T5EncoderModel |
| `flux` | FluxPipeline              | FluxTransformer2DModel, packed latents, guidance | CLIPTextModel + T5EncoderModel            |

Schedulers: SD1.5's betas (DDIMScheduler), SDXL's (EulerDiscreteScheduler), SD3's FlowMatchEulerDiscreteScheduler
(shift 3), Flux-dev's (dynamic, resolution-dependent shift). Tokenizers are learned from a built-in corpus
(`vocab`): CLIP's byte-level BPE layout, T5's unigram layout.

    python -m stepdistill.tiny OUT_DIR [--family sdxl]     # builds the folder and prints its path
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from ..io import atomic_dir
from .builders import BUILDERS

__all__ = ["build_tiny_class_conditional", "build_tiny_text_to_image", "ensure_tiny_text_to_image", "FAMILIES",
           "PREDICTION_TYPES", "SHIPPED_NAMES"]

FAMILIES = tuple(BUILDERS)
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
CACHE_NAME = "tiny-sd"
# Teacher names `teachers.load_teacher` builds on first use: "tiny-sd" (SD1.5), "tiny-sdxl", "tiny-sd3", "tiny-flux".
SHIPPED_NAMES = {"tiny-sd": "sd15", "tiny-sdxl": "sdxl", "tiny-sd3": "sd3", "tiny-flux": "flux"}


def build_tiny_text_to_image(folder: str | Path, *, seed: int = 0, prediction_type: str | None = None,
                             family: str = "sd15") -> Path:
    """Write a tiny random pipeline folder of `family` (safetensors weights) and return its path.

    `prediction_type`: the UNet families' ("epsilon" by default); the flow transformers predict the flow.
    The same `seed` gives byte-identical weights. The folder appears in one rename, so it is either absent
    or complete; a complete folder (one with model_index.json) already there is returned as it is.
    """
    if family not in BUILDERS:
        raise ValueError(f"family {family!r} is not one of {', '.join(FAMILIES)}")
    flow = family in ("sd3", "flux")
    prediction_type = prediction_type or ("flow" if flow else "epsilon")
    if not flow and prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    folder = Path(folder).expanduser()
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists() and any(folder.iterdir()):  # never replace a folder that this function did not write
        raise FileExistsError(f"{folder} exists, is not empty and has no model_index.json; remove it or pick another")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        pipe = BUILDERS[family](seed, prediction_type)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def build_tiny_class_conditional(folder: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random digits-shaped teacher folder and return its path: a 16x16 one-channel
    `UNet2DModel` with 10 classes + the null label and the digits teacher's cosine VP, v-prediction
    scheduler. What the recipes' tests run on; the same `seed` gives the same weights."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder).expanduser()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
                           num_class_embeds=11)
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(tmp / "unet")
        DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
            tmp / "scheduler")
        (tmp / "train_config.yaml").write_text("data: digits\n")  # the embedded data it stands in for
    return folder


def build_tiny_super_resolution(folder: str | Path, *, scale: int = 4, seed: int = 0, residual: bool = False) -> Path:
    """Write a tiny random super-resolution teacher folder (16x16 RGB, the bicubic LR copy concatenated: 6 input
    channels, 3 output; cosine VP, v-prediction; `sr_scale` in model_index.json, as `recipes/train_teacher.py`
    writes the shipped one; `residual`: `sr_residual`, the network models the residual over the upsample) and return
    its path. What the SR recipes' tests run on."""
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder).expanduser()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(sample_size=16, in_channels=6, out_channels=3, block_out_channels=(8, 16),
                           layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8)
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(tmp / "unet")
        DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(
            tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(
            {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"], "sr_scale": scale,
             "sr_residual": residual}, indent=2) + "\n")
        (tmp / "train_config.yaml").write_text("data: patches\n")
    return folder


def ensure_tiny_text_to_image(cache_dir: str | Path | None = None, *, name: str = CACHE_NAME) -> Path:
    """Path of a tiny pipeline (seed 0; epsilon for the UNet families) named as in `SHIPPED_NAMES`, in
    `<cache_dir>/<name>`, building it on first use. `cache_dir` defaults to `$STEPDISTILL_CACHE`, else
    `~/.cache/stepdistill`."""
    if name not in SHIPPED_NAMES:
        raise ValueError(f"no tiny pipeline named {name!r}; expected one of {', '.join(SHIPPED_NAMES)}")
    if cache_dir is None:
        cache_dir = os.environ.get("STEPDISTILL_CACHE") or Path.home() / ".cache" / "stepdistill"
    return build_tiny_text_to_image(Path(cache_dir).expanduser() / name, family=SHIPPED_NAMES[name])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stepdistill.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    parser.add_argument("--family", default="sd15", choices=FAMILIES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction-type", default=None, choices=(*PREDICTION_TYPES, "flow"),
                        help="the UNet families' (default epsilon); flow for sd3 and flux")
    args = parser.parse_args(argv)
    print(build_tiny_text_to_image(args.out_dir, seed=args.seed, prediction_type=args.prediction_type,
                                   family=args.family))
