"""Randomness for the global batch, sliced per process and per micro-batch.

Every random draw of a step (noise, times, labels) is made for the *global* batch from a generator seeded by
(seed, step), and each process takes its slice (real images likewise, keyed by (seed, step): `data.stream`). One
and N processes see the same data, so their runs agree up to reduction order, and a resumed run draws what the
uninterrupted one would have.

Gradient accumulation (`train.micro_batch_size`) splits a process's slice into `passes` micro-batches. A phase
of a step (the losses before one optimiser update) runs once per micro-batch on a view of the draw
(`micro_views`): the first view draws the global tensors and keeps them on a tape, the others replay the tape,
and each view takes its own rows. So every pass sees exactly the samples the unaccumulated step would have
given it, and the generator's state after the phase is the same.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
from accelerate import Accelerator


class _Tape:
    """The global tensors one phase drew, in order: recorded by the first micro-batch, replayed by the others."""

    def __init__(self):
        self.values: list = []
        self.position: int | None = None  # None: recording

    def take(self, make: Callable[[], object]) -> object:
        if self.position is None:
            value = make()
            self.values.append(value)
            return value
        if self.position >= len(self.values):
            raise RuntimeError("a micro-batch drew more than the first one: a phase's draws must not depend on "
                               "its micro-batch")
        value = self.values[self.position]
        self.position += 1
        return value


class Draw:
    def __init__(self, accelerator: Accelerator, batch: int, seed: int, step: int, *, passes: int = 1):
        """`batch`: the global batch; `passes`: micro-batches per process (gradient accumulation)."""
        self.acc, self.batch, self.passes, self.k = accelerator, batch, passes, None
        self.seed, self.step = seed, step
        self.g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        self._micro: tuple[int, int] = (0, 1)  # (this view's micro-batch, of how many)
        self._tape: _Tape | None = None

    @property
    def local_batch(self) -> int:
        """The samples this process takes a step: the global batch over the processes."""
        return self.batch // self.acc.num_processes

    def micro_views(self) -> Iterator["Draw"]:
        """Views of this draw, one per micro-batch (just this draw without accumulation)."""
        if self.passes == 1:
            yield self
            return
        tape = _Tape()
        for index in range(self.passes):
            view = copy.copy(self)
            view._micro, view._tape = (index, self.passes), tape
            tape.position = None if index == 0 else 0
            yield view
            if index == 0:
                self.k = view.k  # what the phase drew once (a multistep generator's step)

    def slice(self, x: torch.Tensor) -> torch.Tensor:
        """This view's rows of a tensor of this process's rows (the local batch)."""
        index, count = self._micro
        n = x.shape[0] // count
        return x[index * n:(index + 1) * n]

    def sampled(self, make: Callable[[], object]) -> object:
        """Any other draw of the global batch from `self.g` (made once per phase, replayed in every micro-batch)."""
        return make() if self._tape is None else self._tape.take(make)

    def local(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.acc.num_processes
        return self.slice(x[self.acc.process_index * n:(self.acc.process_index + 1) * n]).to(self.acc.device)

    def randn(self, *shape) -> torch.Tensor:
        return self.local(self.sampled(lambda: torch.randn(self.batch, *shape, generator=self.g)))

    def rand(self) -> torch.Tensor:
        return self.local(self.sampled(lambda: torch.rand(self.batch, generator=self.g)))

    def uniform(self, *shape) -> torch.Tensor:
        """U[0, 1) noise of the sample shape (TAD-SR's official HSD noise)."""
        return self.local(self.sampled(lambda: torch.rand(self.batch, *shape, generator=self.g)))

    def times(self, sampler, schedule) -> torch.Tensor:
        return self.local(self.sampled(lambda: sampler.sample(schedule, self.batch, generator=self.g)))

    def labels(self, conditioner) -> torch.Tensor:
        return self.local(self.sampled(lambda: conditioner.sample_labels(self.batch, generator=self.g)))

    def integer(self, n: int) -> int:
        """One integer in [0, n), the same for every sample and process (a multistep generator's step)."""
        return int(self.sampled(lambda: torch.randint(0, n, (1,), generator=self.g)))

    def dropped(self, labels: torch.Tensor, p: float) -> torch.Tensor:
        """`labels` with each replaced by the null condition (-1) with probability p (drawn globally)."""
        keep = self.rand() >= p
        return torch.where(keep, labels, torch.full_like(labels, -1))

    def index(self, n: int) -> torch.Tensor:
        """Indices into a collection of `n` items (CPU), drawn with replacement."""
        return self.local(self.sampled(lambda: torch.randint(0, n, (self.batch,), generator=self.g))).cpu()

    def real(self, stream) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This view's rows of the step's real images and their labels (class labels, caption numbers) or None,
        from a `data.stream.RealStream` (keyed by this draw's seed, batch and step, not drawn from `self.g`)."""
        images, labels = self.sampled(lambda: stream.take(self))
        return self.slice(images), None if labels is None else self.slice(labels)
