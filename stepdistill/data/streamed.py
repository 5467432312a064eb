"""A Hugging Face dataset read as a stream (`data.streaming=true`): rows in order, never all indexed.

For a dataset too large to download (LAION-scale on the Hub) or to index. The stream is shuffled within a buffer
(`data.shuffle_buffer` rows, after `datasets` shuffles the shard order; both seeded by `train.seed`), split between
the processes (`datasets.distributed.split_dataset_by_node`) and repeated epoch after epoch (each reshuffled).

Ordered, not keyed: each request takes this process's next rows. What that costs against the indexed sources
(`stream.RealStream`):

- **Process count.** Which rows a process reads depends on how many processes split the stream, so one and N
  processes see different samples (the same distribution). A resume with another process count carries on from the
  same row count of the new split, with a warning.
- **Resume.** The rows taken so far are checkpointed (`state_dict`, registered with accelerate); a resumed run skips
  that many rows of its stream and goes on with the row the uninterrupted run would have read next. Skipping reads
  them (their bytes, not their pixels): resuming deep into a Hub stream re-downloads what it skips.
- **Loader workers.** The training process reads the rows' undecoded bytes and captions in order; its DataLoader
  workers decode, resize and crop them. So `data.loader_workers` does not change the samples or their order.
- **Checks.** No row is read at setup beyond the first (its columns): a corrupt image is found when its batch is
  decoded, and stops the run naming the row (or, with `data.skip_corrupt`, is skipped with a warning).

Captions arrive with their images: `label` (the text conditioner's `streamed_labels`) turns each batch's into labels.
"""
from __future__ import annotations

import io
import itertools
import warnings
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from .folders import CorruptImageError, decoded, square_transform, strict_decoding
from .paired import (CAPTION_KEYS, LABEL_KEYS, DataSourceError, Want, _as_caption, _as_label, _first_line, _pick,
                     dataset_path, is_saved_dataset)
from .stream import _OPEN, PREFETCH, _worker_init, worker_cap


def open_streamed(name: str, split: str):
    """`datasets.IterableDataset` of `name`'s `split`: a Hub name or a local folder, streamed; a `save_to_disk`
    folder through `to_iterable_dataset` (its Arrow shards)."""
    import datasets

    where = f"data.dataset={name}"
    path = dataset_path(name, where)
    try:
        if path.is_dir() and is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataSourceError(f"{where} has no split {split!r}; its splits: {sorted(ds)} (data.split)")
                ds = ds[split]
            return ds.to_iterable_dataset(num_shards=max(1, min(64, len(ds) // 1024)))
        return datasets.load_dataset(str(path) if path.is_dir() else name, split=split, streaming=True)
    except DataSourceError:
        raise
    except ValueError as e:
        if "split" in str(e).lower():
            raise DataSourceError(f"{where} has no split {split!r} ({_first_line(e)}; data.split)") from None
        raise DataSourceError(f"{where}: could not be streamed: {_first_line(e)}") from None
    except Exception as e:  # the Hub client raises several types (offline, gated, unknown repo)
        raise DataSourceError(f"{where}: could not be streamed: {type(e).__name__}: {_first_line(e)}") from None


class StreamedSource:
    """The rows of a streamed dataset, as (undecoded image, caption or label or None), its columns resolved from its
    features (or, when a format does not declare them, its first row)."""

    def __init__(self, name: str, *, want: Want, split: str = "train", image_column: str | None = None,
                 caption_column: str | None = None, label_column: str | None = None, shuffle_buffer: int = 1000):
        import datasets

        if shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer={shuffle_buffer} must be >= 0 (0: the stream's own order)")
        self.where, self.want, self.shuffle_buffer = f"data.dataset={name}", want, shuffle_buffer
        ds = open_streamed(name, split)
        features = ds.features
        if features is None:  # a format without a schema: the first row's keys
            try:
                first = next(iter(ds))
            except StopIteration:
                raise DataSourceError(f"{self.where} (split {split!r}) has no rows") from None
            keys = list(first)
        else:
            keys = list(features)
        images = [k for k in keys if features is not None and isinstance(features[k], datasets.Image)]
        self.image_key = _pick(keys, image_column, tuple(images) + ("image", "img", "jpg", "png"), self.where,
                               "image")
        if features is not None and isinstance(features[self.image_key], datasets.Image):
            ds = ds.cast_column(self.image_key, datasets.Image(decode=False))
        self.value_key = (_pick(keys, caption_column, CAPTION_KEYS, self.where, "caption") if want == "captions"
                          else _pick(keys, label_column, LABEL_KEYS, self.where, "label") if want == "labels"
                          else None)
        self.ds = ds.select_columns([k for k in (self.image_key, self.value_key) if k is not None])

    def rows(self, *, seed: int, rank: int, processes: int, skip: int = 0) -> Iterator[tuple]:
        """This process's rows, epoch after epoch, from row `skip` on: (position, image bytes or path, value)."""
        from datasets.distributed import split_dataset_by_node

        ds = self.ds.shuffle(seed=seed, buffer_size=self.shuffle_buffer) if self.shuffle_buffer else self.ds
        ds = split_dataset_by_node(ds, rank=rank, world_size=processes)

        def epochs() -> Iterator[tuple]:
            for epoch in itertools.count():
                ds.set_epoch(epoch)
                empty = True
                for row in ds:
                    empty = False
                    yield self._image(row[self.image_key]), self._value(row)
                if empty:
                    raise DataSourceError(f"{self.where}: process {rank} of {processes} was given no rows (fewer "
                                          "rows or shards than processes?)")

        return ((position, *row) for position, row in enumerate(itertools.islice(epochs(), skip, None), skip))

    def _image(self, value) -> bytes | str:
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            value = value["bytes"] if value.get("bytes") is not None else value["path"]
        if isinstance(value, (bytes, str)):
            return value
        raise DataSourceError(f"{self.where}: column {self.image_key!r} holds {type(value).__name__}, not images")

    def _value(self, row: dict):
        if self.value_key is None:
            return None
        where = f"{self.where} column {self.value_key!r}"
        return _as_caption(row[self.value_key], where) if self.want == "captions" else _as_label(row[self.value_key],
                                                                                                   where)


class _Decode(Dataset):
    """A request (position, image, value, seed, tag) -> the decoded item, in a loader worker; a row that does not
    decode comes back with `"corrupt"` set (the training process names it, or skips it)."""

    def __init__(self, resolution: int, channels: int, center_crop: bool, random_flip: bool):
        self.channels = channels
        self.transform = square_transform(resolution, channels, center_crop=center_crop, random_flip=random_flip)
        self.blank = torch.zeros(channels, resolution, resolution)

    def __len__(self) -> int:
        return 2**62  # the requests carry their rows

    def __getitem__(self, request: tuple) -> dict:
        position, image, value, seed, tag = request
        item = {"position": torch.tensor(position), "tag": torch.tensor(tag), "corrupt": ""}
        try:
            with strict_decoding(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                item["images"] = self.transform(decoded(io.BytesIO(image) if isinstance(image, bytes) else image,
                                                        self.channels))
        except Exception as e:  # PIL raises several unrelated types for bad files
            item["images"], item["corrupt"] = self.blank, str(e) or type(e).__name__
        if isinstance(value, str):
            item["caption"] = value
        elif value is not None:
            item["class_labels"] = torch.tensor(value, dtype=torch.long)
        return item


class OrderedStream:
    """`take(draw)`: this process's next real images (and labels) from a streamed dataset, on its device.

    `label`: captions -> labels (the text conditioner's `streamed_labels`); `num_classes`: a class-conditional
    teacher's class count (labels beyond it are refused as they arrive)."""

    def __init__(self, source: StreamedSource, resolution: int, *, channels: int = 3, center_crop: bool = True,
                 random_flip: bool = False, skip_corrupt: bool = False, workers: int = 0, pin_memory: bool = False,
                 label: Callable[[list[str]], torch.Tensor] | None = None, num_classes: int | None = None):
        self.source, self.label, self.num_classes = source, label, num_classes
        self.decode = _Decode(resolution, channels, center_crop, random_flip)
        self.skip_corrupt, self.pin_memory = skip_corrupt, pin_memory
        self.workers = worker_cap(workers)
        self.taken = 0  # rows this process has taken (and skipped as corrupt): where a resume starts
        self._processes: int | None = None  # this run's process count, once started
        self._saved_processes: int | None = None  # the checkpoint's
        self._batches: Iterator | None = None
        self._held: list[dict] = []  # decoded rows not yet taken, in order
        self.corrupt = 0

    def state_dict(self) -> dict:
        return {"rows": self.taken, "processes": self._processes}

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.taken, self._saved_processes = int(state["rows"]), state["processes"]

    def take(self, draw) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(images, labels or None): the next `draw.local_batch` rows of this process's stream."""
        acc = draw.acc
        n = draw.batch // acc.num_processes
        if self._batches is None:
            self._start(draw.seed, acc, chunk=n)
        rows = []
        while len(rows) < n:
            if not self._held:
                batch = next(self._batches)
                self._held = [{k: v[i] for k, v in batch.items()} for i in range(len(batch["tag"]))]
            row = self._held.pop(0)
            self.taken += 1
            if row["corrupt"]:
                self._corrupt(row)
                continue
            rows.append(row)
        device = acc.device
        images = torch.stack([r["images"] for r in rows]).to(device, non_blocking=True)
        if "caption" in rows[0]:
            labels = self.label([r["caption"] for r in rows])
        elif "class_labels" in rows[0]:
            labels = torch.stack([r["class_labels"] for r in rows])
            top = int(labels.max())
            if self.num_classes is not None and top >= self.num_classes:
                raise DataSourceError(f"{self.source.where}: row {int(rows[int(labels.argmax())]['position'])} of "
                                      f"process {acc.process_index} has class label {top}, but the teacher has "
                                      f"{self.num_classes} classes (0..{self.num_classes - 1})")
        else:
            labels = None
        return images, None if labels is None else labels.to(device, non_blocking=True)

    def _corrupt(self, row: dict) -> None:
        where = f"{self.source.where} row {int(row['position'])} of this process's stream"
        if not self.skip_corrupt:
            raise CorruptImageError(f"corrupt image in {where}: {row['corrupt']} (data.skip_corrupt=true skips such "
                                    "rows)")
        self.corrupt += 1
        warnings.warn(f"skipped a corrupt image in {where}: {row['corrupt']} ({self.corrupt} so far)", stacklevel=3)

    def _start(self, seed: int, acc, *, chunk: int) -> None:
        self._processes = acc.num_processes
        if self._saved_processes not in (None, self._processes):
            warnings.warn(f"{self.source.where} is streamed: the run was saved with {self._saved_processes} "
                          f"processes and resumes with {self._processes}, so each process's stream is split "
                          f"anew; it carries on {self.taken} rows into the new split", stacklevel=3)
        rows = self.source.rows(seed=seed, rank=acc.process_index, processes=acc.num_processes, skip=self.taken)
        rank = acc.process_index

        def requests() -> Iterator[list[tuple]]:  # no reference to self: see `stream.RealStream.close`
            for tag in itertools.count():
                part = list(itertools.islice(rows, chunk))
                # the per-row seed of random crops and flips: the run's seed, the process and the row
                yield [(position, image, value, ((seed * 1_000_003 + rank) * 2_147_483_647 + position) % 2**63,
                        tag)
                       for position, image, value in part]

        loader = DataLoader(self.decode, batch_sampler=requests(), num_workers=self.workers,
                            prefetch_factor=PREFETCH if self.workers else None, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(seed),
                            worker_init_fn=_worker_init if self.workers else None)
        self._batches, self._held = iter(loader), []
        _OPEN.add(self)

    def close(self) -> None:
        self._batches, self._held = None, []
        _OPEN.discard(self)
