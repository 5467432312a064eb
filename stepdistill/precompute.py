"""Encode a run's real images and texts once, ahead of training: VAE latents and text embeddings in safetensors
shards that runs read with `data.precomputed=OUTPUT` (`data.precomputed`). A text-to-image run then neither decodes
an image nor runs the VAE's encoder or a text encoder for a stored text in its steps.

    python -m stepdistill.precompute teacher=stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        data.dataset=user/pairs data.prompts=prompts.txt output=outputs/sd15_pairs
    accelerate launch recipes/dmd2.py --config recipes/configs/dmd2/sd15.yaml data.prompts=prompts.txt \\
        data.precomputed=outputs/sd15_pairs

The `data` keys are a recipe's (`DataConfig`: the source, its columns, `data.resolution`); the crop is fixed (random
crops and flips would be baked in, so they are refused). The folder records the teacher's and the VAE's weights
digests and the resolution; a run with another teacher or resolution refuses it.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .training.sections import DataConfig

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class PrecomputeConfig:
    teacher: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    data: DataConfig = field(default_factory=DataConfig)
    output: str = "outputs/precomputed"
    batch_size: int = 32  # images (or texts) a VAE (or text encoder) call
    shard_size: int = 4096  # rows a shard file
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # what the latents and embeddings are stored in
    latents: bool = True
    embeddings: bool = True


def check(cfg: PrecomputeConfig) -> None:
    """The settings, before the teacher is loaded."""
    if cfg.batch_size < 1 or cfg.shard_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size} and shard_size={cfg.shard_size} must be >= 1")
    if not cfg.data.center_crop or cfg.data.random_flip:
        raise ValueError("data.center_crop=false and data.random_flip=true draw a new crop each step; precomputed "
                         "latents would hold one: precompute with the centre crop, no flip")
    if cfg.data.precomputed is not None:
        raise ValueError("data.precomputed names a folder to read; precompute writes `output`")
    if not (cfg.latents or cfg.embeddings):
        raise ValueError("latents=false and embeddings=false: nothing to precompute")


def precompute(cfg: PrecomputeConfig) -> Path:
    """Write `cfg.output` (in one rename: an interrupted run leaves no half folder) and return it."""
    from .conditioning import TextConditioner
    from .data.precomputed import INDEX, TEXTS
    from .fingerprints import run_identity, weights_digest
    from .io import atomic_dir
    from .latents import LatentSpace
    from .teachers import load_teacher
    from .training.setup import setup_data

    check(cfg)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[cfg.dtype]
    teacher = load_teacher(cfg.teacher, device=device)
    conditioner, space, dataset = setup_data(cfg.data, teacher, device, need_images=False)
    if not isinstance(space, LatentSpace) or not isinstance(conditioner, TextConditioner):
        raise ValueError(f"{cfg.teacher} is not a text-to-image teacher: precompute encodes latents and text "
                         "embeddings (a pixel teacher's images need no encoding)")
    if cfg.latents and dataset is None:
        raise ValueError("latents=true needs real images: data.images, data.dataset or data.shards "
                         "(or latents=false for the text embeddings alone)")
    identity = {**run_identity(teacher, cfg.data), "vae_weights": weights_digest(space.vae),
                "resolution": str(space.resolution)}
    index: dict = {"identity": identity, "latent_shape": list(space.shape), "dtype": cfg.dtype}
    captions = list(getattr(dataset, "captions", None) or []) if dataset is not None else []
    with atomic_dir(cfg.output) as out:
        if cfg.latents:
            index |= _latents(dataset, space, out, cfg, dtype)
        texts = list(dict.fromkeys([*conditioner.prompts, *conditioner.captions]))
        if cfg.embeddings:
            index |= _embeddings(conditioner.encoder, texts, out, cfg, dtype)
        (out / TEXTS).write_text(json.dumps({"texts": texts if cfg.embeddings else [],
                                             "captions": captions or None}) + "\n")
        (out / INDEX).write_text(json.dumps(index, indent=1) + "\n")
    return Path(cfg.output)


@torch.no_grad()
def _latents(dataset, space, out: Path, cfg: PrecomputeConfig, dtype) -> dict:
    """Every real image's latent, in dataset order, sharded; with its class label, or its caption's number."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.data.loader_workers, shuffle=False)
    labelled = getattr(getattr(dataset, "source", None), "labels", None) is not None
    sources = list(getattr(dataset, "indices", range(len(dataset))))  # the caption each row's image has
    shards, rows, labels, picked, done = [], [], [], [], 0

    def flush():
        if not rows:
            return
        name = f"latents-{len(shards):05d}.safetensors"
        tensors = {"latents": torch.cat(rows).to(dtype).contiguous(), "sources": torch.cat(picked)}
        if labelled:
            tensors["labels"] = torch.cat(labels)
        save_file(tensors, str(out / name))
        shards.append(name)
        for part in (rows, labels, picked):
            part.clear()

    for batch in tqdm(loader, desc="latents", unit="batch"):
        rows.append(space.encode(batch["images"].to(space.vae.device)).cpu())
        picked.append(torch.tensor(sources[done:done + len(rows[-1])]))
        if labelled:
            labels.append(batch["class_labels"])
        done += len(rows[-1])
        if sum(len(r) for r in rows) >= cfg.shard_size:
            flush()
    flush()
    return {"latent_shards": shards, "count": done, "labels": labelled,
            "captions": getattr(dataset, "captions", None) is not None}


@torch.no_grad()
def _embeddings(encoder, texts: list[str], out: Path, cfg: PrecomputeConfig, dtype) -> dict:
    """Every prompt's and caption's encoder rows (`prompt_encoders`), in `texts` order, sharded."""
    shards, names = [], []
    for start in tqdm(range(0, len(texts), cfg.shard_size), desc="embeddings", unit="shard"):
        part = texts[start:start + cfg.shard_size]
        encoded = [encoder.encode(part[i:i + cfg.batch_size]) for i in range(0, len(part), cfg.batch_size)]
        names = list(encoded[0])
        name = f"embeddings-{len(shards):05d}.safetensors"
        save_file({k: torch.cat([e[k] for e in encoded]).to(dtype).cpu().contiguous() for k in names},
                  str(out / name))
        shards.append(name)
    return {"embedding_shards": shards, "embedding_names": names}


def main(argv: list[str] | None = None) -> None:
    from .config import ConfigError, load_config

    try:
        cfg = load_config(PrecomputeConfig, argv)
        folder = precompute(cfg)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"precomputed: {folder}")


if __name__ == "__main__":
    main()
