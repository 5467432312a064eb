"""Randomness for the global batch, sliced per process.

Every random draw of a step (noise, times, labels, real images) is made for the *global* batch from
a generator seeded by (seed, step), and each process takes its slice: one and N processes see the
same data, so their runs agree up to reduction order, and a resumed run draws what the
uninterrupted one would have.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


class Draw:
    def __init__(self, accelerator: Accelerator, batch: int, seed: int, step: int):
        self.acc, self.batch, self.k = accelerator, batch, None
        self.g = torch.Generator().manual_seed(seed * 1_000_003 + step)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.acc.num_processes
        return x[self.acc.process_index * n:(self.acc.process_index + 1) * n].to(self.acc.device)

    def randn(self, *shape) -> torch.Tensor:
        return self.local(torch.randn(self.batch, *shape, generator=self.g))

    def rand(self) -> torch.Tensor:
        return self.local(torch.rand(self.batch, generator=self.g))

    def uniform(self, *shape) -> torch.Tensor:
        """U[0, 1) noise of the sample shape (TAD-SR's official HSD noise)."""
        return self.local(torch.rand(self.batch, *shape, generator=self.g))

    def times(self, sampler, schedule) -> torch.Tensor:
        return self.local(sampler.sample(schedule, self.batch, generator=self.g))

    def labels(self, conditioner) -> torch.Tensor:
        return self.local(conditioner.sample_labels(self.batch, generator=self.g))

    def dropped(self, labels: torch.Tensor, p: float) -> torch.Tensor:
        """`labels` with each replaced by the null condition (-1) with probability p (drawn globally)."""
        keep = self.rand() >= p
        return torch.where(keep, labels, torch.full_like(labels, -1))

    def index(self, n: int) -> torch.Tensor:
        """Indices into a collection of `n` items (CPU), drawn with replacement."""
        return self.local(torch.randint(0, n, (self.batch,), generator=self.g)).cpu()

    def real(self, dataset) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = self.index(len(dataset))
        items = [dataset[int(i)] for i in idx]
        labels = torch.stack([it["class_labels"] for it in items]).to(self.acc.device) \
            if "class_labels" in items[0] else None
        return torch.stack([it["images"] for it in items]).to(self.acc.device), labels
