"""Paired real data: each image with its caption (or class label), from one of three sources.

- `MetadataFolder`: an image folder with `metadata.jsonl` (diffusers' imagefolder convention: one JSON object a
  line, `file_name` relative to the folder, the caption and label as other keys);
- `HubDataset`: a Hugging Face `datasets` dataset, by Hub name or a `save_to_disk` folder;
- `TarShards`: webdataset tar shards (`data/{000..127}.tar`): members `KEY.jpg` / `KEY.txt` / `KEY.cls`.

Each is indexed at setup (captions and labels read, image bytes left where they are) and read by index: the
training draw picks the global batch's indices from (seed, draw), so any process count and any number of loader
workers see the same samples, and a resumed run reads what the uninterrupted one would have (`stream.RealStream`).
webdataset's own reader only streams, so the shards are indexed here from their tar headers, as webdataset's
indexed reader (wids) does. `PairedImages` decodes, resizes and crops an item with torchvision's transforms.
"""
from __future__ import annotations

import glob
import io
import json
import tarfile
from pathlib import Path
from typing import Literal, Protocol

import torch
from PIL import Image
from torch.utils.data import Dataset

from .folders import CorruptImageError, decoded, keep_decodable, square_transform, strict_decoding

CAPTION_KEYS = ("text", "caption", "prompt", "txt")  # tried in this order when data.caption_column is null
SHARD_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
LABEL_KEYS = ("label", "cls", "class")  # tried in this order when data.label_column is null


Want = Literal["captions", "labels"] | None  # what each image must come with


class DataSourceError(ValueError):
    """Real data that cannot be trained on (a missing column, an empty shard, an unknown dataset): one line
    naming the source and what to change."""


class Source(Protocol):
    where: str  # the source, for messages
    captions: list[str] | None  # item i's caption, if the source has them
    labels: list[int] | None  # item i's class label, if it has them

    def __len__(self) -> int: ...

    def image_bytes(self, i: int) -> bytes | str | Path: ...  # the encoded image, or its file

    def describe(self, i: int) -> str: ...  # item i, for messages


def _pick(keys: list[str], column: str | None, defaults: tuple[str, ...], where: str, what: str) -> str:
    if column is not None:
        if column not in keys:
            raise DataSourceError(f"{where} has no {what} column {column!r}; its columns: {sorted(keys)}")
        return column
    for key in defaults:
        if key in keys:
            return key
    raise DataSourceError(f"{where} has no {what} column (looked for {', '.join(defaults)}); its columns: "
                          f"{sorted(keys)}: name it with data.{what}_column")


def _as_label(value, where: str) -> int:
    try:
        label = int(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        raise DataSourceError(f"{where}: the class label {value!r} is not an integer") from None
    if label < 0:
        raise DataSourceError(f"{where}: the class label {label} is negative")
    return label


def _as_caption(value, where: str) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], str):
        value = value[0]  # several captions an image (COCO): the first
    if not isinstance(value, str):
        raise DataSourceError(f"{where}: the caption is {type(value).__name__}, not text")
    return value.strip()


def _read_column(want: Want, keys: list[str], caption_column: str | None, label_column: str | None, where: str,
                 values) -> tuple[list[str] | None, list[int] | None]:
    """(captions, labels): the column `want` names, its values from `values(key)` ((value, where) pairs)."""
    if want == "captions":
        key = _pick(keys, caption_column, CAPTION_KEYS, where, "caption")
        return [_as_caption(v, at) for v, at in values(key)], None
    if want == "labels":
        key = _pick(keys, label_column, LABEL_KEYS, where, "label")
        return None, [_as_label(v, at) for v, at in values(key)]
    return None, None


class MetadataFolder:
    """An image folder with `metadata.jsonl`: `{"file_name": "a.png", "text": "a red square"}` a line."""

    def __init__(self, root: str | Path, *, want: Want, image_column: str | None = None,
                 caption_column: str | None = None, label_column: str | None = None):
        self.root = Path(root)
        meta = self.root / "metadata.jsonl"
        self.where = str(meta)
        rows = []
        for n, line in enumerate(meta.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataSourceError(f"{meta}: line {n}: invalid JSON: {e.msg}") from None
        if not rows:
            raise DataSourceError(f"{meta} lists no images")
        keys = list(rows[0])
        file_key = _pick(keys, image_column, ("file_name",), self.where, "image")
        self.paths = []
        for n, row in enumerate(rows, start=1):
            if file_key not in row:
                raise DataSourceError(f"{meta}: line {n} has no {file_key!r}")
            path = self.root / row[file_key]
            if not path.is_file():
                raise DataSourceError(f"{meta}: line {n}: no image {path}")
            self.paths.append(path)
        self.captions, self.labels = _read_column(want, keys, caption_column, label_column, self.where,
                                                  lambda key: [(row.get(key), f"{meta}: line {n}")
                                                               for n, row in enumerate(rows, 1)])

    def __len__(self) -> int:
        return len(self.paths)

    def image_bytes(self, i: int) -> Path:
        return self.paths[i]

    def describe(self, i: int) -> str:
        return str(self.paths[i])


def dataset_path(name: str, where: str) -> Path:
    """`data.dataset` as a path: a local folder (which must exist), or a Hub name (user/name) left as it is."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1:  # a path, not a Hub name
        if not Path(name).expanduser().is_dir():
            raise DataSourceError(f"{where}: no such folder (a save_to_disk folder, a folder of data files or a Hub "
                                  "dataset's name such as user/name)")
        return Path(name).expanduser()
    return Path(name)


def is_saved_dataset(folder: Path) -> bool:
    """Whether a folder was written by `save_to_disk` (a Dataset's `state.json`, a DatasetDict's
    `dataset_dict.json`), rather than holding data files (parquet, csv, an imagefolder) `load_dataset` reads."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


class HubDataset:
    """A `datasets` dataset: a `save_to_disk` folder, or a name `load_dataset` resolves (the Hub, a local folder of
    data files: parquet, an imagefolder). Images are read undecoded (`datasets.Image(decode=False)`) and decoded in the loader's workers."""

    def __init__(self, name: str, *, want: Want, split: str = "train", image_column: str | None = None,
                 caption_column: str | None = None, label_column: str | None = None):
        import datasets

        self.where = f"data.dataset={name}"
        name = str(dataset_path(name, self.where))
        try:
            if Path(name).is_dir() and is_saved_dataset(Path(name)):
                ds = datasets.load_from_disk(name)
            else:
                ds = datasets.load_dataset(name, split=split)
        except FileNotFoundError as e:
            raise DataSourceError(f"{self.where}: not a save_to_disk folder, and no dataset of that name could be "
                                  f"loaded ({_first_line(e)})") from None
        except Exception as e:  # the Hub client raises several types (offline, gated, unknown repo)
            raise DataSourceError(f"{self.where}: could not be loaded: {type(e).__name__}: {_first_line(e)}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataSourceError(f"{self.where} has no split {split!r}; its splits: {sorted(ds)} "
                                      "(data.split)")
            ds = ds[split]
        keys = list(ds.column_names)
        features = ds.features
        images = [k for k in keys if isinstance(features[k], datasets.Image)]
        self.image_key = _pick(keys, image_column, tuple(images) + ("image", "img"), self.where, "image")
        if isinstance(features[self.image_key], datasets.Image):
            ds = ds.cast_column(self.image_key, datasets.Image(decode=False))
        if len(ds) == 0:
            raise DataSourceError(f"{self.where} (split {split!r}) has no rows")
        self.captions, self.labels = _read_column(want, keys, caption_column, label_column, self.where,
                                                  lambda key: [(v, f"{self.where}: row {i}")
                                                               for i, v in enumerate(ds[key])])
        self.ds = ds.select_columns([self.image_key])

    def __len__(self) -> int:
        return len(self.ds)

    def image_bytes(self, i: int) -> bytes | str:
        value = self.ds[i][self.image_key]
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            return value["bytes"] if value.get("bytes") is not None else value["path"]
        if isinstance(value, (str, bytes)):
            return value
        raise DataSourceError(f"{self.where}: column {self.image_key!r} holds {type(value).__name__}, not images")

    def describe(self, i: int) -> str:
        return f"{self.where} row {i}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def expand_shards(spec: str | list[str]) -> list[Path]:
    """Shard paths from a brace pattern (`data/{000..127}.tar`), a glob, or a list of either."""
    from braceexpand import braceexpand

    found = []
    for part in [spec] if isinstance(spec, str) else list(spec):
        for pattern in braceexpand(str(part)):
            matches = sorted(map(Path, glob.glob(pattern))) if any(c in pattern for c in "*?[") else [Path(pattern)]
            found += matches
    return found


class TarShards:
    """webdataset tar shards, indexed from their headers: sample KEY's members `KEY.jpg` (or png / webp), `KEY.txt`
    (the caption; `data.caption_column` names another extension) and `KEY.cls` (the class label)."""

    def __init__(self, spec: str | list[str], *, want: Want, image_column: str | None = None,
                 caption_column: str | None = None, label_column: str | None = None):
        self.where = f"data.shards={spec}"
        self.shards = expand_shards(spec)
        if not self.shards:
            raise DataSourceError(f"{self.where} matches no files")
        missing = [p for p in self.shards if not p.is_file()]
        if missing:
            raise DataSourceError(f"{self.where}: no shard {missing[0]}"
                                  f"{f' ({len(missing) - 1} more missing)' if len(missing) > 1 else ''}")
        self.members: list[tuple[int, int, int, str]] = []  # (shard, offset, size, key) of each sample's image
        self.captions = [] if want == "captions" else None
        self.labels = [] if want == "labels" else None
        image_exts = (image_column,) if image_column else SHARD_IMAGE_EXTENSIONS
        for number, shard in enumerate(self.shards):
            samples = self._index(shard)
            if not samples:
                raise DataSourceError(f"{self.where}: shard {shard} holds no samples (an empty or unreadable tar)")
            for key, found in samples.items():
                where = f"shard {shard} sample {key}"
                image = next((found[e] for e in image_exts if e in found), None)
                if image is None:
                    raise DataSourceError(f"{self.where}: {where} has no image ({', '.join(image_exts)}); its "
                                          f"members: {sorted(found)}")
                self.members.append((number, *image, key))
                if want is not None:
                    captions, labels = _read_column(want, list(found), caption_column, label_column,
                                                    f"{self.where}: {where}",
                                                    lambda ext: [(self._read(number, *found[ext]), where)])
                    (self.captions if want == "captions" else self.labels).extend(captions or labels)

    def _index(self, shard: Path) -> dict[str, dict[str, tuple[int, int]]]:
        """{key: {extension: (data offset, size)}}, keys in the shard's order (webdataset's rule: the key is the
        member's path up to the first dot of its file name)."""
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        if shard.stat().st_size == 0:
            return samples
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, _, name = member.name.rpartition("/")
                    stem, dot, ext = name.partition(".")
                    if not dot or name.startswith("."):
                        continue
                    key = f"{folder}/{stem}" if folder else stem
                    samples.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)
        except tarfile.TarError as e:
            raise DataSourceError(f"{self.where}: shard {shard} is not a readable tar ({e})") from None
        return samples

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        with open(self.shards[shard], "rb") as f:
            f.seek(offset)
            return f.read(size)

    def __len__(self) -> int:
        return len(self.members)

    def image_bytes(self, i: int) -> bytes:
        return self._read(*self.members[i][:3])

    def describe(self, i: int) -> str:
        shard, _, _, key = self.members[i]
        return f"shard {self.shards[shard]} sample {key}"


def open_source(data, *, want: Literal["captions", "labels"] | None) -> Source | None:
    """The paired source `data` (a `DataConfig`) names: `data.dataset`, `data.shards`, or `data.images` holding
    `metadata.jsonl`; None for a plain image folder or no real data. `want`: what each image must come with (its
    caption, its class label from `data.label_column`, or nothing)."""
    named = [k for k in ("images", "dataset", "shards", "precomputed") if getattr(data, k) is not None]
    if len(named) > 1:
        raise DataSourceError(f"real images come from one source; set only one of "
                              f"{', '.join('data.' + k for k in named)}")
    columns = dict(image_column=data.image_column, want=want, caption_column=data.caption_column,
                   label_column=data.label_column)
    if data.precomputed is not None:  # its index holds the captions (`data.precomputed`)
        return None
    if data.dataset is not None:
        return HubDataset(data.dataset, split=data.split, **columns)
    if data.shards is not None:
        return TarShards(data.shards, **columns)
    if data.images is not None and (Path(data.images) / "metadata.jsonl").is_file():
        return MetadataFolder(data.images, **columns)
    return None


class PairedImages(Dataset):
    """A source's items as `{"images": (C, H, W) in [-1, 1], "class_labels": ()}`: the image decoded, its shorter
    side resized to `resolution` and cropped square (`folders.square_transform`); the label is the item's class
    label, or its caption's number in the text conditioner's table (`caption_offset + i`).

    `verify`: decode every image once here, so a corrupt one is named before any training step (or, with
    `skip_corrupt`, left out with one warning)."""

    reads_files = True  # decoded in loader workers (`stream.RealStream`)

    def __init__(self, source: Source, resolution: int, *, channels: Literal[3, 1] = 3, center_crop: bool = True,
                 random_flip: bool = False, verify: bool = True, skip_corrupt: bool = False):
        self.source, self.channels = source, channels
        self.transform = square_transform(resolution, channels, center_crop=center_crop, random_flip=random_flip)
        self.caption_offset = 0
        self.indices = list(range(len(source)))
        if verify:
            self._drop_corrupt(skip_corrupt)

    def _open(self, i: int) -> Image.Image:
        data = self.source.image_bytes(i)
        try:
            return decoded(io.BytesIO(data) if isinstance(data, bytes) else data, self.channels)
        except Exception as e:  # PIL raises several unrelated types for bad files
            raise CorruptImageError(f"corrupt image {self.source.describe(i)}: {e}") from e

    def _drop_corrupt(self, skip: bool) -> None:
        def reason(i: int) -> str | None:
            try:
                self._open(i)
            except CorruptImageError as e:
                return str(e.__cause__ or e)
            return None

        self.indices = keep_decodable(self.indices, reason, self.source.describe, f"in {self.source.where}",
                                      skip=skip)

    @property
    def captions(self) -> list[str] | None:
        return self.source.captions

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, index: int) -> int:
        i = self.indices[index]
        if self.source.labels is not None:
            return self.source.labels[i]
        return self.caption_offset + i

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with strict_decoding():
            item = {"images": self.transform(self._open(self.indices[index]))}
        if self.source.labels is not None or self.source.captions is not None:
            item["class_labels"] = torch.tensor(self.label(index), dtype=torch.long)
        return item
