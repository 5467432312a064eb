"""Prompt lists (txt / csv / tsv / json / jsonl) and a prompt `Dataset` with CFG dropout."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

PROMPT_COLUMNS = ("prompt", "caption", "text")  # tried in this order when `column` is not given
PROMPT_EXTENSIONS = (".txt", ".csv", ".tsv", ".json", ".jsonl")


class PromptFileError(ValueError):
    """A prompt file that cannot be read; the message names the file (and line, where known)."""


def _pick_column(keys: list[str], column: str | None, where: str) -> str:
    if column is not None:
        if column in keys:
            return column
        raise PromptFileError(f"{where}: no column {column!r}; available columns: {keys}")
    lowered = {k.lower(): k for k in keys}
    for name in PROMPT_COLUMNS:
        if name in lowered:
            return lowered[name]
    raise PromptFileError(
        f"{where}: no prompt column (looked for {', '.join(PROMPT_COLUMNS)}); "
        f"available columns: {keys}; pass column=..."
    )


def _from_value(value: object, column: str | None, where: str) -> str:
    """One JSON element: a string, or an object holding the prompt under the column rule."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        text = value[_pick_column(list(value), column, where)]
        if isinstance(text, str):
            return text
        raise PromptFileError(f"{where}: prompt is {type(text).__name__}, expected a string")
    raise PromptFileError(f"{where}: expected a string or an object, got {type(value).__name__}")


def load_prompts(path: str | Path, *, column: str | None = None) -> list[str]:
    """Read prompts from `path`; surrounding whitespace stripped, empty prompts dropped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROMPT_EXTENSIONS:
        raise PromptFileError(
            f"{path}: unknown prompt file type {suffix!r}; use one of {', '.join(PROMPT_EXTENSIONS)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    try:
        # utf-8-sig: tolerate the byte-order mark that spreadsheet tools write.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e

    if suffix == ".txt":
        raw = text.splitlines()
    elif suffix in (".csv", ".tsv"):
        delimiter = "," if suffix == ".csv" else "\t"
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
        if not reader.fieldnames:
            raise PromptFileError(f"{path}: no header row")
        key = _pick_column(list(reader.fieldnames), column, str(path))
        raw = [row[key] or "" for row in reader]
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e
        if not isinstance(data, list):
            raise PromptFileError(f"{path}: expected a JSON list, got {type(data).__name__}")
        raw = [_from_value(v, column, f"{path}: item {i}") for i, v in enumerate(data)]
    else:  # .jsonl: one JSON value per non-blank line
        raw = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}: line {lineno}: invalid JSON: {e.msg}") from e
            raw.append(_from_value(value, column, f"{path}: line {lineno}"))

    prompts = [p.strip() for p in raw if p and p.strip()]
    if not prompts:
        raise PromptFileError(f"{path}: no prompts found")
    return prompts


class PromptDataset(Dataset):
    """`{"prompt": str}` items; with probability `null_prompt_prob` the prompt is "" (CFG dropout).

    The dropout draw depends only on (seed, epoch, index), never on worker count or order. Call
    `set_epoch` before each epoch (workers copy the dataset, so not with `persistent_workers`).
    """

    def __init__(self, prompts: list[str], *, null_prompt_prob: float = 0.0, seed: int = 0) -> None:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a list of strings")
        if len(prompts) == 0:
            raise ValueError("prompts is empty")
        if not 0.0 <= float(null_prompt_prob) <= 1.0:
            raise ValueError(f"null_prompt_prob must be in [0, 1], got {null_prompt_prob}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.prompts = list(prompts)
        self.null_prompt_prob = float(null_prompt_prob)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, str]:
        index = range(len(self.prompts))[index]  # IndexError when out of range; negatives wrap
        prompt = self.prompts[index]
        if self.null_prompt_prob > 0.0:
            # A fresh generator keyed on (seed, epoch, index): reproducible under any sharding.
            u = np.random.default_rng([self.seed, self.epoch, index]).random()
            if u < self.null_prompt_prob:
                prompt = ""
        return {"prompt": prompt}
