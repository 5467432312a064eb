"""Conditions for the trio's denoisers: what `cond` / `uncond` keyword arguments a batch carries.

A conditioner turns a batch of labels (class ids, or prompts) into the keyword arguments of the
denoising network, plus the null condition classifier-free guidance contrasts with. Recipes draw
conditions through it and never know whether the model is class- or text-conditional.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassConditioner:
    """Class labels 0..num_classes-1 as `class_labels=`; `null_label` is the unconditional class
    (None for a model trained without label dropout: guidance is then unavailable)."""

    num_classes: int
    null_label: int | None = None

    def sample_labels(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(device)

    def cond(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class_labels": labels}

    def uncond(self, labels: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if self.null_label is None:
            return None
        return {"class_labels": torch.full_like(labels, self.null_label)}

    def drop(self, labels: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null label with probability p (condition dropout)."""
        if p <= 0 or self.null_label is None:
            return labels
        mask = torch.rand(labels.shape, generator=generator).to(labels.device) < p
        return torch.where(mask, torch.full_like(labels, self.null_label), labels)
