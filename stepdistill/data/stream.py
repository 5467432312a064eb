"""Real images for the training draw, loaded ahead by `DataLoader` workers.

A step's real batch is keyed by (seed, global batch, step, call): its indices are drawn with replacement from a
generator seeded by that key, and each process takes its rows. So one and N processes, any number of workers and a
resumed run all see the samples the uninterrupted one-process run would have (nothing to checkpoint: the key is
known from the step). Random crops and flips draw from a per-item seed, not from the worker's generator.

The workers decode the batches the run will ask for next. Which those are is predicted from the previous step (the
same calls in the same order: every recipe's case); an unexpected request restarts the workers at it, so a wrong
guess costs time, never different data.
"""
from __future__ import annotations

import atexit
import os
import signal
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

# How many batches each worker keeps decoded ahead of the step.
PREFETCH = 2


@dataclass(frozen=True)
class Key:
    """One request: the draw's seed and global batch, the step, and the request's number within the step."""

    seed: int
    batch: int
    step: int
    call: int

    def indices(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global batch's item indices in [0, n) and their augmentation seeds."""
        g = torch.Generator().manual_seed((((self.seed * 1_000_003 + self.step) * 1_009 + self.call) * 8_191
                                           + self.batch) % 2**63)
        return torch.randint(0, n, (self.batch,), generator=g), torch.randint(0, 2**62, (self.batch,), generator=g)


class _Seeded(Dataset):
    """`dataset[i]` with torch's generator seeded for the item (its random crop and flip), for (i, seed, tag)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, request: tuple[int, int, int]) -> dict:
        index, seed, tag = request
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            item = dict(self.dataset[index])
        item["tag"] = torch.tensor(tag)
        return item


def _schedule(first: Key, pattern: list[tuple[int, int]]) -> Iterator[Key]:
    """`first`, then the predicted requests: this step's rest and every later step as `pattern` (the previous step's
    requests) went."""
    yield first
    pattern = pattern or [(first.seed, first.batch)]
    for call, (seed, batch) in enumerate(pattern[first.call + 1:], start=first.call + 1):
        yield Key(seed, batch, first.step, call)
    step = first.step
    while True:
        step += 1
        for call, (seed, batch) in enumerate(pattern):
            yield Key(seed, batch, step, call)


def _worker_init(_: int) -> None:
    """A cluster's SIGTERM reaches every process of the job: the workers leave it to the training process, which
    finishes its step and checkpoints (`training.loop`) while they keep serving it. They exit when it closes its
    streams (`RealStream.close`, also at interpreter exit: `_close_all`) or, if it is killed, when their loader's
    watchdog sees it gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_OPEN: "weakref.WeakSet[RealStream]" = weakref.WeakSet()


@atexit.register  # registered after torch's exit hook, so it runs before it, while loaders can still shut down
def _close_all() -> None:
    for stream in list(_OPEN):
        stream.close()


def reads_files(dataset) -> bool:
    """Whether items are decoded from files (worth loader workers), through wrappers that hold `.dataset`."""
    while dataset is not None:
        if getattr(dataset, "reads_files", False):
            return True
        dataset = getattr(dataset, "dataset", None)
    return False


def worker_cap(workers: int) -> int:
    """`data.loader_workers`, checked, and no more than this process may run on (more only contend)."""
    if workers < 0:
        raise ValueError(f"data.loader_workers={workers} must be >= 0")
    return min(workers, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class RealStream:
    """`take(draw)`: this process's real images (and labels) for the draw's step, on its device.

    `workers`: DataLoader worker processes for datasets read from files (in-memory ones load in the step)."""

    def __init__(self, dataset, *, workers: int = 0, pin_memory: bool = False):
        self.dataset, self.pin_memory = dataset, pin_memory
        self.workers = worker_cap(workers) if reads_files(dataset) else 0
        self._step: int | None = None
        self._calls: list[tuple[int, int]] = []  # (seed, batch) of this step's requests so far
        self._pattern: list[tuple[int, int]] = []  # the previous step's
        self._next: Key | None = None  # the request the loader's next batch answers
        self._plan: Iterator[Key] = iter(())
        self._position = 0
        self._batches: Iterator | None = None
        self.restarts = 0  # how often a request was not the predicted one (each restarts the workers)

    def over(self, dataset) -> "RealStream":
        """A stream of another dataset (a part of this one) with these settings."""
        return RealStream(dataset, workers=self.workers, pin_memory=self.pin_memory)

    def __len__(self) -> int:
        return len(self.dataset)

    def take(self, draw) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, labels or None): the draw's process rows of its step's next real batch."""
        if draw.step != self._step:
            if self._step is not None and draw.step == self._step + 1:
                self._pattern = self._calls
            self._step, self._calls = draw.step, []
        key = Key(draw.seed, draw.batch, draw.step, len(self._calls))
        self._calls.append((draw.seed, draw.batch))
        if key != self._next:
            self._restart(key, draw.acc)
        batch = next(self._batches)
        if int(batch["tag"][0]) != self._position:
            raise RuntimeError("the real-image loader returned batches out of order")
        self._position += 1
        self._next = next(self._plan)
        device = draw.acc.device
        images = batch["images"].to(device, non_blocking=True)
        labels = batch["class_labels"].to(device, non_blocking=True) if "class_labels" in batch else None
        return images, labels

    def close(self) -> None:
        """Shut the loader's workers down (they exit once they read the loader's stop)."""
        self._batches, self._next = None, None  # the iterator holds no reference back: freed, it stops its workers
        _OPEN.discard(self)

    def _restart(self, key: Key, acc) -> None:
        self.restarts += self._batches is not None
        self.close()
        pattern = list(self._pattern)
        self._plan, self._position = _schedule(key, pattern), 0
        next(self._plan)  # `key` itself
        n, rank, processes = len(self.dataset), acc.process_index, acc.num_processes

        def requests() -> Iterator[list[tuple[int, int, int]]]:  # no reference to self: see `close`
            for tag, k in enumerate(_schedule(key, pattern)):
                indices, seeds = k.indices(n)
                rows = slice(rank * (k.batch // processes), (rank + 1) * (k.batch // processes))
                yield [(int(i), int(s), tag) for i, s in zip(indices[rows], seeds[rows])]

        # its own generator: a loader draws its workers' base seed, which must not come from torch's global one
        # (dropout's), or a resumed run (whose loader starts later) would drop out differently
        loader = DataLoader(_Seeded(self.dataset), batch_sampler=requests(), num_workers=self.workers,
                            prefetch_factor=PREFETCH if self.workers else None, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(key.step),
                            worker_init_fn=_worker_init if self.workers else None)
        self._batches = iter(loader)
        _OPEN.add(self)
