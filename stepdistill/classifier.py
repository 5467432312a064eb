"""The digits feature network: a small CNN classifier whose penultimate features define FD.

Features are the penultimate layer *before* its activation: a linear map of the convolutional
trunk has no dead units (a ReLU feature layer left 34 of 64 units dead in an early prototype),
so every dimension carries signal into the Frechet distance.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

WEIGHTS, CONFIG = "model.safetensors", "config.json"


class DigitsClassifier(nn.Module):
    def __init__(self, resolution: int = 16, in_channels: int = 1, num_classes: int = 10,
                 width: int = 32, feature_dim: int = 64, dropout: float = 0.2):
        super().__init__()
        self.config = dict(resolution=resolution, in_channels=in_channels, num_classes=num_classes,
                           width=width, feature_dim=feature_dim, dropout=dropout)
        w = width
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(),
        )
        self.embed = nn.Linear(4 * w * (resolution // 4) ** 2, feature_dim)
        self.head = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) in [-1, 1] -> (B, feature_dim) penultimate pre-activation features."""
        return self.embed(self.trunk(x))

    def pooled_features(self, x: torch.Tensor, layer: int = 3) -> torch.Tensor:
        """(B, C, R, R) -> (B, 2 * channels): the `layer`-th convolution's activations (1-based), mean- and
        max-pooled over space. Mid-level stroke statistics: the max keeps a stroke detector's strongest
        response (a sharp edge), the mean its extent, neither of which the class-separating last layer keeps."""
        h = self.trunk[:2 * layer](x)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps(self.config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "DigitsClassifier":
        folder = Path(folder)
        for name in (WEIGHTS, CONFIG):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"digits classifier folder {folder} has no {name}; "
                                        "train one with `python recipes/train_classifier.py`")
        model = cls(**json.loads((folder / CONFIG).read_text()))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        return model.eval().requires_grad_(False)
