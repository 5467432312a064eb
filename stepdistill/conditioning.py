"""Conditions for the trio's denoisers: what `cond` / `uncond` keyword arguments a batch carries.

A conditioner turns a batch of labels (class ids, prompts, or low-resolution images) into the keyword arguments of the
denoising network, plus the null condition classifier-free guidance contrasts with. Recipes draw
conditions through it and never know whether the model is class- or text-conditional.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

import torch

from .degradations import Degradation, bicubic_up


@dataclass
class ClassConditioner:
    """Class labels 0..num_classes-1 as `class_labels=`; `null_label` is the unconditional class
    (None for a model trained without label dropout: guidance is then unavailable)."""

    kind: ClassVar[str] = "class"  # what conditions the student: picks its exporter and evaluation
    num_classes: int
    null_label: int | None = None

    def call_options(self) -> dict:
        """What an exported pipeline's call needs beyond the condition itself: nothing."""
        return {}

    @classmethod
    def for_embeddings(cls, num_class_embeds: int) -> "ClassConditioner":
        """A diffusers UNet with `num_class_embeds` embeddings, the last one the null class (how the
        shipped teacher and the recipes' teachers are trained with label dropout)."""
        return cls(num_class_embeds - 1, null_label=num_class_embeds - 1)

    def sample_labels(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(device)

    def cond(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Label -1 stands for "no label" and maps to the null class."""
        if self.null_label is not None:
            labels = torch.where(labels < 0, torch.full_like(labels, self.null_label), labels)
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


# Labels of streamed captions (`TextConditioner.streamed_labels`): a ring of STREAMED, far past any prompt table.
STREAMED_BASE, STREAMED = 2**40, 65_536


class TextConditioner:
    """Prompts as the text-conditioning keyword arguments of the teacher's family (`prompt_encoders`):
    `encoder_hidden_states=` for SD 1.x / 2.x, plus SDXL's `added_cond_kwargs=` (pooled embedding, size ids),
    SD3's and Flux's `pooled_projections=` (and Flux's embedded `guidance=`).

    Labels are prompt indices (-1 is the empty prompt, the unconditional branch of CFG). Each prompt is
    encoded on first use and cached in float16 on the CPU, up to `cache_mib` (the least recently used prompts
    go first, and are encoded again when drawn again); the empty prompt is encoded up front.
    """

    kind = "text"

    def call_options(self) -> dict:
        """The pipeline call's own arguments (Flux's embedded guidance, the prompt length, the image size)."""
        return self.encoder.call_options()

    def __init__(self, prompts: list[str], encoder, *, device="cpu", cache_mib: float = 4096.0,
                 captions: list[str] | None = None, store=None):
        """`prompts`: what the generator is trained on (labels 0..len - 1); `captions`: the real images' own (label
        `caption_offset + i` is caption i; `data.paired`); `store`: precomputed embeddings (`data.precomputed`), read
        for the texts it holds instead of encoding them."""
        self.store = store
        if not prompts:
            raise ValueError("TextConditioner needs at least one prompt")
        if not cache_mib > 0:
            raise ValueError(f"data.embedding_cache_mib={cache_mib} must be > 0")
        self.prompts, self.encoder, self.device = prompts, encoder, torch.device(device)
        self.captions = list(captions or [])
        self.num_classes = self.caption_offset = len(prompts)
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()  # least recently used first
        self._cache_bytes, self.cache_bytes_limit = 0, int(cache_mib * 2**20)
        check = getattr(encoder, "warn_if_cut", None)
        if check is not None:  # the whole prompt list at once: one warning, and prompts cut into one found
            check(prompts + self.captions)
        self.null = {k: v[0] for k, v in encoder.null().items()}
        self._ring: dict[int, str] = {}  # streamed captions by ring slot (`streamed_labels`)
        self._streamed = 0

    def rows(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each label's encoded prompt, stacked: {name: (B, ...)} in float32 on `labels`' device."""
        wanted = [int(i) for i in labels.tolist()]
        missing = sorted({i for i in wanted if i >= 0 and i not in self._cache})
        stored = [i for i in missing if self.store is not None and self.text(i) in self.store]
        missing = [i for i in missing if i not in set(stored)]
        fresh = {}
        for ids, rows in ((missing, self.encoder.encode), (stored, self.store and self.store.rows)):
            if ids:
                found = rows([self.text(i) for i in ids])
                fresh |= {i: {k: v[j].half().cpu() for k, v in found.items()} for j, i in enumerate(ids)}
        picked = [self.null if i < 0 else fresh.get(i) or self._cache[i] for i in wanted]
        for i in dict.fromkeys(i for i in wanted if i >= 0):  # this batch's prompts become the most recent
            if i in fresh:
                self._cache[i] = fresh[i]
                self._cache_bytes += sum(t.nbytes for t in fresh[i].values())
            else:
                self._cache.move_to_end(i)
        while self._cache_bytes > self.cache_bytes_limit and len(self._cache) > 1:
            _, gone = self._cache.popitem(last=False)
            self._cache_bytes -= sum(t.nbytes for t in gone.values())
        return {k: torch.stack([p[k].float().to(labels.device) for p in picked]) for k in self.null}

    def labels_for(self, texts: list[str]) -> torch.Tensor:
        """Labels standing for `texts` (validation prompts): appended to the captions' table, beyond every prompt the
        generator draws."""
        start = self.caption_offset + len(self.captions)
        self.captions += list(texts)
        return torch.arange(start, start + len(texts))

    def streamed_labels(self, texts: list[str]) -> torch.Tensor:
        """Labels standing for a streamed batch's captions (`data.streaming`: no table of them exists ahead), from a
        ring of `STREAMED` labels past every other: a label is reused `STREAMED` captions later (long after its step),
        its cached embedding dropped then."""
        start = self._streamed
        labels = [STREAMED_BASE + (start + i) % STREAMED for i in range(len(texts))]
        for label, text in zip(labels, texts):
            if label in self._cache:
                self._cache_bytes -= sum(t.nbytes for t in self._cache.pop(label).values())
            self._ring[label - STREAMED_BASE] = text
        self._streamed = start + len(texts)
        return torch.tensor(labels)

    def text(self, label: int) -> str:
        """The prompt or caption a label stands for."""
        if label >= STREAMED_BASE:
            return self._ring[label - STREAMED_BASE]
        return self.prompts[label] if label < self.caption_offset else self.captions[label - self.caption_offset]

    def embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """The prompts' token states (B, L, D): what every family's cross-attention reads."""
        return self.rows(labels)["hidden"]

    def sample_labels(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(device)

    def cond(self, labels: torch.Tensor) -> dict:
        return self.encoder.kwargs(self.rows(labels))

    def uncond(self, labels: torch.Tensor) -> dict:
        return self.cond(torch.full_like(labels, -1))

    def drop(self, labels: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if p <= 0:
            return labels
        mask = torch.rand(labels.shape, generator=generator).to(labels.device) < p
        return torch.where(mask, torch.full_like(labels, -1), labels)


def cat_conditions(a: dict, b: dict) -> dict:
    """Two batches' keyword arguments as one batch: tensors joined on the batch dimension, nested dicts
    (SDXL's `added_cond_kwargs`) joined key by key, anything else (a flag) taken from `b`."""
    out = {}
    for k, v in b.items():
        if torch.is_tensor(v):
            out[k] = torch.cat([a[k], v])
        elif isinstance(v, dict):
            out[k] = cat_conditions(a[k], v)
        else:
            out[k] = v
    return out


class Unconditional:
    """No condition: labels are placeholders (zeros) and add no keyword arguments; no guidance."""

    kind = "unconditional"

    def call_options(self) -> dict:
        return {}
    num_classes = 1
    null_label = None

    def sample_labels(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=device)

    def cond(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def uncond(self, labels: torch.Tensor) -> None:
        return None

    def drop(self, labels: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return labels


class LRConditioner:
    """A low-resolution image as the condition (super-resolution: SR3, TAD-SR's teacher): label i is item i of
    `dataset`, whose LR image is its `"lr"` entry when that has this conditioner's scale, else its
    high-resolution `"images"` entry degraded by `degradation` with seed i (`stepdistill.degradations`: bicubic x4 by default). The network reads it on the
    HR grid (bicubic upsampling) as extra input channels; `Denoiser` concatenates it after the c_in scaling of
    x_t (`concat=`). Label -1, the null condition (classifier-free guidance), is an all-zero image."""

    kind = "lr"

    def call_options(self) -> dict:
        return {}
    null_label = -1

    def __init__(self, dataset, degradation: Degradation, channels: int):
        self.dataset, self.degradation, self.extra_channels = dataset, degradation, int(channels)
        self.num_classes = len(dataset)

    @property
    def scale(self) -> int:
        return self.degradation.scale

    def lr(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) in [-1, 1]: each label's low-resolution image (label -1: zeros)."""
        items = [self.dataset[max(int(i), 0)] for i in labels.tolist()]
        hr = items[0]["images"]
        if "lr" in items[0] and items[0]["lr"].shape[-1] * self.scale == hr.shape[-1]:  # the item's own, this scale
            low = torch.stack([it["lr"] for it in items])
        else:
            low = self.degradation(torch.stack([it["images"] for it in items]), seeds=labels.clamp(min=0).tolist())
        low = low.to(labels.device)
        return torch.where((labels < 0).view(-1, 1, 1, 1), torch.zeros_like(low), low)

    def condition(self, low: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's keyword arguments for LR images `low` (any source: a folder, a pipeline's input)."""
        size = (low.shape[-2] * self.scale, low.shape[-1] * self.scale)
        return {"concat": bicubic_up(low, size)}

    def sample_labels(self, n: int, *, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor:
        return torch.randint(0, self.num_classes, (n,), generator=generator).to(device)

    def cond(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.condition(self.lr(labels))  # the null image stays zero: bicubic of zeros

    def uncond(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.cond(torch.full_like(labels, -1))

    def drop(self, labels: torch.Tensor, p: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
        if p <= 0:
            return labels
        mask = torch.rand(labels.shape, generator=generator).to(labels.device) < p
        return torch.where(mask, torch.full_like(labels, -1), labels)
