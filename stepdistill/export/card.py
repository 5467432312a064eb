"""The model card of an export: YAML front matter (library, license, base model, tags), the exact loading and sampling
code, the metrics table; and the license a student inherits from its teacher.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..io import atomic_write_text

__all__ = ["Usage", "CARD_KEYS", "PROJECT_LICENSE", "write_model_card", "card_arguments", "teacher_license",
           "hub_reference", "is_local", "fused_losses_line"]


CARD_KEYS = ("base_model", "recipe", "metrics", "tags", "extra", "license")
PROJECT_LICENSE = "apache-2.0"  # the shipped teachers' too: the project trained them



@dataclass(frozen=True)
class Usage:
    """The model card's code, rendered once (`render`): load the pipeline, prepare, then call it for one image from
    one seeded generator (the first input's noise and every re-noising step draw from it, as `Student.sample` does).
    Values are Python source (the `repr` of a value)."""

    source: str  # what `from_pretrained` loads, as code: './folder', or the base model's hub id
    source_comment: str = "or the hub repo id"
    remote_code: bool = False  # a travelling pipeline: trust_remote_code=True
    schedulers: tuple[str, ...] = ()  # diffusers names imported beside DiffusionPipeline
    imports: tuple[str, ...] = ()  # other import lines
    setup: tuple[str, ...] = ()  # lines after loading (a LoRA, a scheduler)
    draws: tuple[str, ...] = ()  # lines after the generator is made (the first input drawn from it)
    inputs: tuple[str, ...] = ('"a photo of a cat"',)  # the call's leading arguments
    arguments: tuple[tuple[str, str], ...] = ()  # (keyword, value as code), in order
    result: str = "image"  # "image": `.images[0]`; "images": `.images`

    def with_arguments(self, *pairs: tuple[str, str]) -> "Usage":
        return replace(self, arguments=(*self.arguments, *pairs))

    def render(self) -> str:
        remote = ", trust_remote_code=True" if self.remote_code else ""
        head = f"{self.result} = pipe("
        args = [*self.inputs, *(f"{k}={v}" for k, v in self.arguments), "generator=generator"]
        lines, line = [], head
        for i, a in enumerate(args):
            piece = a + (", " if i + 1 < len(args) else "")
            if len(line) + len(piece) > 110 and line != head:
                lines.append(line.rstrip())
                line = " " * len(head)
            line += piece
        lines.append(line + ").images" + ("[0]" if self.result == "image" else ""))
        return "\n".join(["import torch", f"from diffusers import {', '.join(['DiffusionPipeline', *self.schedulers])}",
                          *self.imports, "",
                          f"pipe = DiffusionPipeline.from_pretrained({self.source}{remote})  # {self.source_comment}",
                          *self.setup, "generator = torch.Generator().manual_seed(0)", *self.draws, *lines])


def write_model_card(folder: str | Path, *, base_model: str | None, recipe: str, metrics: Mapping,
                     pipeline_call: str, tags: list[str] | None = None, extra: str = "",
                     pipeline_tag: str | None = None, license: str | None = None) -> Path:
    """Write `folder/README.md`: YAML front matter (library_name diffusers, license, base_model, tags,
    pipeline_tag), a description, the exact loading/sampling code, a metrics table. `base_model` None (e.g.
    a local teacher) is left out; `license` None is written as `other` with a line saying the teacher's
    license applies (a student is a derivative of its teacher)."""
    from huggingface_hub import ModelCard, ModelCardData

    tags = list(dict.fromkeys(["stepdistill", "diffusion-distillation", recipe, *(tags or [])]))
    data = ModelCardData(library_name="diffusers", license=license or "other", base_model=base_model or None,
                         tags=tags, pipeline_tag=pipeline_tag)
    rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in metrics.items())
    table = f"| metric | value |\n|---|---|\n{rows}" if metrics else "No metrics were recorded."
    origin = f"`{base_model}`" if base_model else "its teacher"
    body = (f"# {recipe} student\n\n"
            f"A few-step student distilled from {origin} with the `{recipe}` recipe of "
            f"stepdistill. It loads with stock `diffusers`; "
            f"stepdistill is not needed.\n\n"
            f"## Usage\n\n```python\n{pipeline_call}\n```\n\n## Metrics\n\n{table}\n")
    if extra:
        body += f"\n{extra.strip()}\n"
    if not license:
        body += f"\n## License\n\nThe license of {origin} applies to this student.\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    path = Path(folder) / "README.md"
    atomic_write_text(path, str(card))
    return path


def card_arguments(model_card: dict | None, *, base_model: str | None) -> dict:
    card = dict(model_card or {})
    unknown = sorted(set(card) - set(CARD_KEYS))
    if unknown:
        raise ValueError(f"unknown model_card keys {unknown}; valid: {', '.join(CARD_KEYS)}")
    card.setdefault("base_model", base_model)
    card.setdefault("recipe", "distilled")
    card.setdefault("metrics", {})
    return card


def teacher_license(teacher: str) -> str | None:
    """The license a student inherits: the project's for its shipped teachers, else the `license` in the
    teacher folder's (or cached hub repo's) model card front matter; None when unknown."""
    from ..teachers import shipped_folder

    if shipped_folder(teacher) is not None:
        return PROJECT_LICENSE
    readme = Path(teacher).expanduser() / "README.md"
    if not readme.is_file() and hub_reference(teacher):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(teacher, "README.md")
        readme = Path(cached) if isinstance(cached, str) else readme
    if not readme.is_file():
        return None
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.license or None


def fused_losses_line(record: Mapping | None) -> str:
    """The card's line on what computed each loss that has a fused kernel, from `stepdistill.ops.fused_losses_record()`
    (`{"mode": ..., "backends": {loss: "fused" | "reference" | "reference (fallback: ...)"}}`); "" when none ran."""
    backends = dict((record or {}).get("backends") or {})
    if not backends:
        return ""
    ran = "; ".join(f"`{name}` {what}" for name, what in backends.items())
    return f"Losses: {ran} (train.fused_losses={record['mode']}).\n"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def hub_reference(source) -> str | None:
    """The teacher as a model card may name it: a hub id (`org/name`, not a local path) or None, so that an
    export never carries a local folder's path (private, and meaningless elsewhere)."""
    s = str(source)
    return None if is_local(source) or "/" not in s else s


def is_local(base: str | Path) -> bool:
    """A Path, an existing path, or anything spelled like a path (not `org/name`) is a local folder."""
    s = str(base)
    return isinstance(base, Path) or os.path.exists(s) or s.startswith((".", "/", "~")) or s.count("/") > 1 \
        or os.sep != "/" and os.sep in s
