"""Train the digits classifier shipped in `assets/digits_classifier` (the benchmark's feature network).

    python recipes/train_classifier.py          # ~2 CPU minutes

Two runs with the same settings: a validation run trained on the `reference` split and tested on
the `heldout` split (its accuracy is the honest estimate we report), then the shipped network
trained on `all` 1,797 images, so that reference and held-out images are equally familiar to it
and the real-vs-real floor is not inflated by a train/test gap in feature space.
Augmentation is a random shift of up to one pixel: no flips or noise, so that blurry or noisy
generated digits still land away from real ones in feature space.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from stepdistill.classifier import DigitsClassifier
from stepdistill.config import load_config, to_dict
from stepdistill.data import load_digits_tensors
from stepdistill.io import atomic_dir, atomic_write_text
from stepdistill.metrics import effective_dimension


@dataclass
class ClassifierConfig:
    resolution: int = 16
    width: int = 32
    feature_dim: int = 64
    dropout: float = 0.2
    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1
    seed: int = 0
    output_dir: str = "assets/digits_classifier"


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (edge padding with the background -1)."""
    if max_shift == 0:
        return x
    p = max_shift
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dx, dy = torch.randint(0, 2 * p + 1, (2, x.shape[0]), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(x.shape[0])])


def train(cfg: ClassifierConfig, images: torch.Tensor, labels: torch.Tensor, desc: str) -> DigitsClassifier:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = DigitsClassifier(cfg.resolution, 1, 10, cfg.width, cfg.feature_dim, cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * (len(images) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    model.train()
    for _ in tqdm(range(cfg.epochs), desc=desc):
        perm = torch.randperm(len(images), generator=g)
        for i in range(len(images) // cfg.batch_size):
            idx = perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            loss = F.cross_entropy(model(random_shift(images[idx], cfg.max_shift, g)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((model(images).argmax(1) == labels).float().mean())


def main(cfg: ClassifierConfig) -> None:
    ref_x, ref_y = load_digits_tensors(cfg.resolution, "reference")
    held_x, held_y = load_digits_tensors(cfg.resolution, "heldout")
    all_x, all_y = load_digits_tensors(cfg.resolution, "all")

    # 1. Validation run: train on the reference split, test on the held-out split.
    val_model = train(cfg, ref_x, ref_y, "validation run")
    val_acc = accuracy(val_model, held_x, held_y)
    # 2. The shipped network, trained on every image.
    model = train(cfg, all_x, all_y, "final run")
    with torch.no_grad():
        feats = model.features(all_x).numpy()
    stds = feats.std(0)
    summary = dict(
        command="python " + " ".join(sys.argv),
        heldout_accuracy_of_validation_run=round(val_acc, 4),
        train_accuracy=round(accuracy(model, all_x, all_y), 4),
        feature_dim=cfg.feature_dim,
        effective_dimension=round(effective_dimension(feats), 2),
        dead_units=int((stds < 1e-3 * stds.max()).sum()),
        parameters=sum(p.numel() for p in model.parameters()),
        config=to_dict(cfg),
    )
    with atomic_dir(cfg.output_dir) as out:
        model.save_pretrained(out)
        atomic_write_text(out / "training.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main(load_config(ClassifierConfig))
