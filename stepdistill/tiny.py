"""A tiny, randomly initialised Stable-Diffusion-family pipeline, built locally with no download.

The text-to-image recipes (DMD2, SiD, SwiftBrush) need an SD-shaped teacher to exercise the real latent,
text-encoder, classifier-free-guidance, LoRA and export code paths; no machine here reaches a model hub,
so `build_tiny_text_to_image` writes one from scratch (DESIGN.md, section 5). Quality is irrelevant; the
folder has SD1.5's layout, config keys and geometry (a VAE that downsamples by 8, 4 latent channels,
77-token CLIP prompts, the SD1.5 noise schedule), at a size that loads and samples in about a second on CPU:

| component      | class                   | shape                                                        |
|----------------|-------------------------|--------------------------------------------------------------|
| `unet`         | UNet2DConditionModel    | 8x8x4 latents, channels (32, 64), cross-attention dim 32     |
| `vae`          | AutoencoderKL           | 64x64x3 images <-> 8x8x4 latents, channels (8, 16, 16, 16)   |
| `text_encoder` | CLIPTextModel           | width 32, 2 layers, 2 heads, 77 positions                    |
| `tokenizer`    | CLIPTokenizer           | byte-level BPE, merges learned here from a built-in corpus    |
| `scheduler`    | DDIMScheduler           | SD1.5: scaled_linear betas 0.00085..0.012, 1000 steps        |

    python -m stepdistill.tiny OUT_DIR      # builds the folder and prints its path
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from .io import atomic_dir

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

__all__ = ["build_tiny_class_conditional", "build_tiny_text_to_image", "ensure_tiny_text_to_image", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
MAX_LENGTH = 77  # CLIP's context length: SD-family code pads every prompt to it
CACHE_NAME = "tiny-sd"

# SD1.5's scheduler config; DDIM rather than PNDM because it accepts every prediction type and any step count.
_SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")

# A few prompt-like sentences to learn BPE merges from, so that common words become one or two tokens
# (as with the real CLIP vocabulary) instead of one token a character.
_CORPUS = """
a photo of a cat sitting on a red chair. a painting of two dogs in a green field at sunset.
a red square, a blue circle and a yellow triangle on a white background. an astronaut riding a horse.
a close up portrait of a woman with long hair, studio lighting, high quality, detailed, sharp focus.
a black and white drawing of a house by the sea. a city street at night in the rain, neon lights.
a bowl of fruit on a wooden table; apples, oranges and bananas. mountains covered in snow under a clear sky.
an oil painting of a ship in a storm, dramatic clouds. a cute small bird on a tree branch in spring.
a digital illustration of a castle in the forest, fantasy art, trending, 4k, beautiful colors.
"""
_NUM_MERGES = 400


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE (Sennrich et al., 2016) on CLIP's pre-tokenised words; ties broken by the pair, so deterministic."""
    byte_char = _bytes_to_unicode()
    # CLIP's pre-tokeniser on lowercased ASCII text: letter runs, single digits, punctuation runs.
    words = Counter(re.findall(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+", corpus.lower()))
    seqs: dict[tuple[str, ...], int] = {}
    for word, n in words.items():
        chars = [byte_char[b] for b in word.encode("utf-8")]
        seqs[tuple(chars[:-1]) + (chars[-1] + "</w>",)] = n  # the last symbol carries CLIP's end-of-word mark
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for seq, n in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += n
        if not pairs:  # every word is a single token
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        seqs = {_merge_pair(seq, best): n for seq, n in seqs.items()}
    return merges


def _merge_pair(seq: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """`seq` with every non-overlapping occurrence of `pair`, left to right, fused into one symbol."""
    out, i = [], 0
    while i < len(seq):
        if seq[i:i + 2] == pair:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return tuple(out)


def _build_tokenizer() -> CLIPTokenizer:
    """A CLIPTokenizer over CLIP's vocabulary layout: 256 bytes, 256 bytes + `</w>`, merges, then the specials."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    merges = _learn_merges(_CORPUS, _NUM_MERGES)
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    for a, b in merges:
        if a + b not in tokens:  # two different pairs can spell the same token
            tokens.append(a + b)
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    # Through vocab.json/merges.txt files: the one argument form that both the slow (transformers 4) and the
    # tokenizers-backed (transformers 5) CLIPTokenizer accept; the tokenizer keeps no reference to the files.
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MAX_LENGTH)


def _build_pipeline(seed: int, prediction_type: str) -> StableDiffusionPipeline:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _build_tokenizer()
    # Re-seeding before each network makes every component's weights depend on `seed` alone, not on
    # the order or number of random draws made by the other constructors.
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    torch.manual_seed(seed)
    # Four levels, like SD's VAE, so the pipeline's vae_scale_factor is 8 and 8x8 latents decode to 64x64 images.
    vae = AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.18215)  # SD1.5's latent scale
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu", projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(**_SD15_SCHEDULER, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def build_tiny_text_to_image(folder: str | Path, *, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny random `StableDiffusionPipeline` folder (safetensors weights) and return its path.

    The same `seed` gives byte-identical weights. The folder appears in one rename, so it is either absent
    or complete; a complete folder (one with model_index.json) already there is returned as it is.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    folder = Path(folder).expanduser()
    if (folder / "model_index.json").is_file():
        return folder
    if folder.exists() and any(folder.iterdir()):  # never replace a folder that this function did not write
        raise FileExistsError(f"{folder} exists, is not empty and has no model_index.json; remove it or pick another")
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG as it was
        pipe = _build_pipeline(seed, prediction_type)
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
    return folder


def ensure_tiny_text_to_image(cache_dir: str | Path | None = None) -> Path:
    """Path of the default tiny pipeline (seed 0, epsilon) in `<cache_dir>/tiny-sd`, building it on first use.

    `cache_dir` defaults to `$STEPDISTILL_CACHE`, else `~/.cache/stepdistill`.
    """
    if cache_dir is None:
        cache_dir = os.environ.get("STEPDISTILL_CACHE") or Path.home() / ".cache" / "stepdistill"
    return build_tiny_text_to_image(Path(cache_dir).expanduser() / CACHE_NAME)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stepdistill.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the pipeline to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prediction-type", default="epsilon", choices=PREDICTION_TYPES)
    args = parser.parse_args(argv)
    print(build_tiny_text_to_image(args.out_dir, seed=args.seed, prediction_type=args.prediction_type))


if __name__ == "__main__":
    main()
