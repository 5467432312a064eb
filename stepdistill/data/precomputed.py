"""Reading a precomputed folder (`python -m stepdistill.precompute`): real images as VAE latents, and the text
embeddings of every prompt and caption, in safetensors shards.

    OUTPUT/index.json                 what made it (teacher, VAE and data digests, resolution) and what it holds
    OUTPUT/latents-00000.safetensors  "latents" (N, C, h, w); "sources" (N,), each row's image in its source (its
                                      caption's number); "labels" (N,) where the images have class labels
    OUTPUT/embeddings-00000.safetensors  one tensor per row name of the family's prompt encoder, (N, ...)
    OUTPUT/texts.json                 the embedded texts, in shard order; "captions": the images' captions

A run reads them with `data.precomputed=OUTPUT`: its real batches are latents (`LatentSpace.encode` passes a batch
of latents through), and its text conditioner takes a text's embedding from the folder instead of encoding it. The
folder must come from the same teacher and resolution; anything else is refused at setup.
"""
from __future__ import annotations

import json
from bisect import bisect_right
from pathlib import Path

import torch
from torch.utils.data import Dataset

INDEX = "index.json"
TEXTS = "texts.json"


class PrecomputedError(ValueError):
    """A precomputed folder that cannot serve this run; one line naming it and what differs."""


def read_index(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / INDEX
    if not path.is_file():
        raise PrecomputedError(f"data.precomputed={folder}: no {INDEX} (write the folder with "
                               "`python -m stepdistill.precompute`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PrecomputedError(f"{path}: not valid JSON ({e.msg}); write the folder again") from None


def check_made_for(index: dict, folder: Path, expected: dict[str, str]) -> None:
    """The folder's identity against this run's (`expected`: teacher, VAE, resolution...)."""
    made = index.get("identity", {})
    differs = [k for k, v in expected.items() if str(made.get(k)) != str(v)]
    if differs:
        k = differs[0]
        raise PrecomputedError(f"data.precomputed={folder} was written for {k}={made.get(k)}, this run has "
                               f"{expected[k]}; precompute again for this teacher and data")


class _Shards:
    """Rows of one tensor name across numbered shards, read lazily (memory-mapped), row by global index."""

    def __init__(self, files: list[Path], name: str):
        from safetensors import safe_open

        self.files, self.name, self.starts = files, name, [0]
        for f in files:
            with safe_open(str(f), "pt") as handle:
                self.starts.append(self.starts[-1] + handle.get_slice(name).get_shape()[0])
        self._open: dict[int, object] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def row(self, i: int, name: str | None = None) -> torch.Tensor:
        from safetensors import safe_open

        k = bisect_right(self.starts, i) - 1
        if k not in self._open:  # one handle a shard and process (workers open their own)
            self._open[k] = safe_open(str(self.files[k]), "pt")
        return self._open[k].get_slice(name or self.name)[i - self.starts[k]]

    def __getstate__(self):  # loader workers reopen the files
        return {**self.__dict__, "_open": {}}


class PrecomputedLatents(Dataset):
    """A precomputed folder's latents as real items: `{"images": latents (C, h, w) float32, "class_labels"}`
    (a caption's label is `caption_offset + i`, as `PairedImages`)."""

    reads_files = True  # read in loader workers (`stream.RealStream`)

    def __init__(self, folder: str | Path, index: dict):
        self.folder = Path(folder)
        files = [self.folder / f for f in index.get("latent_shards", [])]
        missing = [f for f in files if not f.is_file()]
        if not files or missing:
            raise PrecomputedError(f"data.precomputed={self.folder}: "
                                   + (f"missing shard {missing[0].name}" if missing else "holds no latents"))
        self.rows = _Shards(files, "latents")
        self.labelled = bool(index.get("labels"))
        self.captioned = bool(index.get("captions"))
        self.caption_offset = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"images": self.rows.row(i).float()}
        if self.labelled:
            item["class_labels"] = self.rows.row(i, "labels").long()
        elif self.captioned:  # the caption of the image the row was encoded from
            item["class_labels"] = self.caption_offset + self.rows.row(i, "sources").long()
        return item


class EmbeddingStore:
    """A precomputed folder's text embeddings, by text: `rows(texts)` -> {name: (B, ...)} (float16, CPU), or None
    for a text it does not hold."""

    def __init__(self, folder: str | Path, index: dict):
        self.folder = Path(folder)
        files = [self.folder / f for f in index.get("embedding_shards", [])]
        texts = json.loads((self.folder / TEXTS).read_text())["texts"] if files else []
        self.at = {t: i for i, t in enumerate(texts)}
        self.names = list(index.get("embedding_names", []))
        self.shards = _Shards(files, self.names[0]) if files else None

    def __contains__(self, text: str) -> bool:
        return text in self.at

    def rows(self, texts: list[str]) -> dict[str, torch.Tensor]:
        at = [self.at[t] for t in texts]
        return {name: torch.stack([self.shards.row(i, name) for i in at]) for name in self.names}


def captions_of(folder: str | Path) -> list[str] | None:
    """The images' captions a precomputed folder keeps (their labels' texts), or None."""
    path = Path(folder) / TEXTS
    return json.loads(path.read_text()).get("captions") if path.is_file() else None
