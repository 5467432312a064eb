"""Splitting the condition space among K students (multi-student distillation) and routing conditions to them.

A `Partition` assigns every condition label (a class id, or a prompt's index) to exactly one student:

- `class_blocks(num_classes, k)`: contiguous blocks of class ids, sizes differing by at most one (MSD's
  class-conditional split);
- `kmeans(embeddings, k)`: k-means on one embedding per condition (a prompt's mean token state), Lloyd's
  algorithm from a seeded k-means++ start, for text conditions; an emptied cluster takes the point farthest
  from its centre among clusters of two or more, so every student owns at least one condition.

`PartConditioner` is a conditioner seen by one student: it draws labels from its part only and conditions
the networks as the full conditioner does; `part_dataset` keeps the real images of a part's classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

__all__ = ["Partition", "class_blocks", "kmeans", "PartConditioner", "part_dataset"]


@dataclass(frozen=True)
class Partition:
    """`owner[label]` is the student that owns condition `label` (0 <= label < len(owner))."""

    owner: tuple[int, ...]
    method: str = "class_blocks"

    def __post_init__(self) -> None:
        k = self.num_students
        if sorted(set(self.owner)) != list(range(k)):
            raise ValueError(f"a partition must give every one of its {k} students a condition; owners {self.owner}")

    @property
    def num_students(self) -> int:
        return max(self.owner) + 1

    def part(self, k: int) -> list[int]:
        """The labels student k owns, ascending."""
        return [label for label, o in enumerate(self.owner) if o == k]

    def route(self, labels: torch.Tensor) -> torch.Tensor:
        """The owning student of each label (B,) -> (B,). The null label (-1) goes to student 0."""
        table = torch.tensor(self.owner, dtype=torch.long, device=labels.device)
        return table[labels.clamp(min=0)]

    def to_json(self) -> dict:
        return {"method": self.method, "students": [self.part(k) for k in range(self.num_students)]}


def class_blocks(num_classes: int, k: int) -> Partition:
    """Classes 0..num_classes-1 in k contiguous blocks, the first num_classes % k one class larger."""
    if not 1 <= k <= num_classes:
        raise ValueError(f"{k} students cannot split {num_classes} classes: need 1 <= students <= classes")
    size, extra = divmod(num_classes, k)
    owner: list[int] = []
    for student in range(k):
        owner += [student] * (size + (student < extra))
    return Partition(tuple(owner), "class_blocks")


def kmeans(embeddings: torch.Tensor, k: int, *, seed: int = 0, iterations: int = 50) -> Partition:
    """k-means on (N, D) embeddings (one per condition): a seeded k-means++ start, then Lloyd's iterations."""
    x = embeddings.double().flatten(1)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"{k} students cannot split {n} conditions: need 1 <= students <= conditions")
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(0, n, (1,), generator=g)]
    while len(centres) < k:  # k-means++: the next centre with probability proportional to squared distance
        d2 = torch.cdist(x, centres).min(1).values.square()
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=g) if float(d2.sum()) > 0 else \
            torch.randint(0, n, (1,), generator=g)
        centres = torch.cat([centres, x[pick]])
    owner = torch.zeros(n, dtype=torch.long)
    for _ in range(iterations):
        owner = torch.cdist(x, centres).argmin(1)
        for c in range(k):
            if not bool((owner == c).any()):  # an empty cluster takes the point farthest from its centre
                counts = torch.bincount(owner, minlength=k)
                dist = torch.cdist(x, centres).gather(1, owner[:, None]).squeeze(1)
                dist[counts[owner] <= 1] = -1.0  # among clusters that can spare one
                owner[dist.argmax()] = c
        new = torch.stack([x[owner == c].mean(0) for c in range(k)])
        if torch.allclose(new, centres):
            break
        centres = new
    return Partition(tuple(int(o) for o in owner), "kmeans")


class PartConditioner:
    """`conditioner` restricted to the labels in `part`: `sample_labels` draws among them uniformly; the
    conditioning itself (`cond`, `uncond`, `drop`) is the full conditioner's."""

    def __init__(self, conditioner, part: list[int]):
        if not part:
            raise ValueError("a student's part of the condition space is empty")
        self.conditioner, self.part = conditioner, torch.tensor(part, dtype=torch.long)

    def __getattr__(self, name):  # everything else (null_label, num_classes, encoder, extra_channels, ...)
        return getattr(self.conditioner, name)

    def sample_labels(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return self.part[torch.randint(0, len(self.part), (n,), generator=generator)].to(device)

    def cond(self, labels: torch.Tensor) -> dict:
        return self.conditioner.cond(labels)

    def uncond(self, labels: torch.Tensor):
        return self.conditioner.uncond(labels)

    def drop(self, labels: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.conditioner.drop(labels, p, generator=generator)


class _Subset(Dataset):
    def __init__(self, dataset, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def part_dataset(dataset, part: list[int]):
    """The items of a labelled dataset whose class is in `part` (the GAN's real images for one student); an
    unlabelled dataset (an uncaptioned image folder) is returned whole."""
    if dataset is None or len(dataset) == 0 or "class_labels" not in dataset[0]:
        return dataset
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = torch.stack([dataset[i]["class_labels"] for i in range(len(dataset))])
    keep = torch.isin(torch.as_tensor(labels), torch.tensor(part)).nonzero().flatten().tolist()
    if not keep:
        raise ValueError(f"no real image has a class in {part}")
    return _Subset(dataset, keep)
