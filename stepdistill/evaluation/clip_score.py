"""CLIP score through open_clip, with every convention that changes the number recorded.

Defaults follow the SD-distillation papers' COCO evaluation (GigaGAN's `evaluation.py`, reused by DMD2
and others): open_clip ViT-g-14 / laion2b_s12b_b42k, the caption prefixed with "A photo depicts ",
truncated to the context length, and the score reported as the mean raw cosine (about 0.3). Set
`times_100=True` for the torchmetrics convention (100 x cosine, about 30; torchmetrics also clamps at 0,
recorded as `clamp_at_zero`).

`pretrained` is an open_clip tag (downloaded into `cache_dir`), a local weights file, or None (random
weights: tests only). The model name may carry open_clip's `local-dir:` / `hf-hub:` schemas.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["ClipScoreConfig", "ClipScorer", "ClipWeightsError"]


class ClipWeightsError(RuntimeError):
    """The CLIP weights are neither cached nor downloadable."""


@dataclass(frozen=True)
class ClipScoreConfig:
    model: str = "ViT-g-14"
    pretrained: Optional[str] = "laion2b_s12b_b42k"  # tag, local file, or None (random weights)
    prefix: str = "A photo depicts "
    times_100: bool = False
    clamp_at_zero: bool = False
    cache_dir: Optional[str] = None
    batch_size: int = 32


class ClipScorer:
    def __init__(self, cfg: ClipScoreConfig = ClipScoreConfig(), device: torch.device | str = "cpu"):
        import open_clip

        self.cfg, self.device = cfg, torch.device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=cfg.pretrained, cache_dir=cfg.cache_dir, device=self.device)
        except Exception as e:  # noqa: BLE001 - hub, network and file errors all mean "no weights here"
            raise ClipWeightsError(
                f"cannot load CLIP model {cfg.model!r} with pretrained={cfg.pretrained!r} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Offline, download the weights "
                f"where there is network access (open_clip.create_model('{cfg.model}', pretrained='{cfg.pretrained}', "
                f"cache_dir=DIR)) and pass --clip-pretrained /path/to/open_clip_model.safetensors "
                f"(ClipScoreConfig.pretrained) or --clip-cache-dir DIR.") from None
        self.model, self.preprocess = model.eval(), preprocess
        self.tokenizer = open_clip.get_tokenizer(cfg.model)

    def settings(self) -> dict:
        import open_clip

        return {**asdict(self.cfg), "library": f"open_clip {open_clip.__version__}",
                "score": "mean cosine" + (" x 100" if self.cfg.times_100 else "")}

    @torch.no_grad()
    def per_image(self, images: Sequence, prompts: Sequence[str]) -> np.ndarray:
        """Cosine (x 100 if configured) between each image (uint8 HWC array or PIL image) and its prompt."""
        from PIL import Image

        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        scores = []
        for start in range(0, len(images), self.cfg.batch_size):
            imgs = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im)) for im in
                    images[start:start + self.cfg.batch_size]]
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in imgs]).to(self.device)
            text = self.tokenizer([self.cfg.prefix + p for p in prompts[start:start + self.cfg.batch_size]])
            fi = torch.nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)
            ft = torch.nn.functional.normalize(self.model.encode_text(text.to(self.device)).float(), dim=-1)
            cos = (fi * ft).sum(-1)
            if self.cfg.times_100:
                cos = 100 * cos
            if self.cfg.clamp_at_zero:
                cos = cos.clamp_min(0)
            scores.append(cos.cpu().numpy())
        return np.concatenate(scores).astype(np.float64)

    def score(self, images: Sequence, prompts: Sequence[str]) -> float:
        return float(self.per_image(images, prompts).mean())
