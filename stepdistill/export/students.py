"""One exporter per conditioner kind (`conditioning.*.kind`): what `Student.export` and `RoutedStudent.export` run.

Each writes a folder that samples as the student does, from the student's `SamplerSpec` alone (its scheduler, its
times, its first-input scale), with `student.json` recording that spec. A new kind of condition adds one entry here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..io import atomic_write_text
from .card import hub_reference
from .lora import export_lora
from .pixel import export_class_conditional, export_super_resolution
from .text_to_image import ROUTED_MAX_STUDENTS, export_routed_text_to_image, export_text_to_image

__all__ = ["export_student", "export_routed", "check_exportable", "EXPORTERS", "ROUTED_EXPORTERS"]


def _card(student, model_card: dict | None) -> dict:
    card = {"base_model": hub_reference(student.teacher.source), "recipe": student.name, **(model_card or {})}
    card["tags"] = [*student.tags, *card.get("tags", [])]
    forgetting = getattr(student, "forgetting", None)
    if forgetting:  # an unlearned student says what it no longer generates, and what it generates instead
        card["extra"] = forgetting_section(forgetting) + card.get("extra", "")
    return card


def forgetting_section(forgetting: dict) -> str:
    """The model card's statement of what a student was trained to forget (`Student.forgetting`)."""
    what = "classes" if forgetting["form"] == "class" else "prompts"
    override = forgetting["override"]
    instead = ("a random retained class for each sample" if override == "random"
               else ", ".join(repr(o) for o in override))
    return (f"## Forgotten conditions\n\nThis student was trained to forget the {what} "
            f"{', '.join(repr(f) for f in forgetting['forget'])}: asked for them, it generates what its teacher "
            f"generates for {instead} instead. Every other condition was distilled as it was.\n\n")


def _text(student, folder: Path, card: dict) -> Path:
    """The base pipeline with the student's network (and, for a LoRA student, its LoRA in `lora/`)."""
    calls = student.call_options()
    spec, net = student.sampler, student.generator.net
    timesteps, options = spec.exported_times(), spec.scheduler_options()
    folder = export_text_to_image(folder, student.teacher.root, net, timesteps=timesteps, model_card=card,
                                  scheduler_options=options, adapter=student.lora_adapter, call_options=calls,
                                  record=student.record())
    if student.lora_adapter is not None:  # also as the LoRA itself, for the stock base pipeline
        export_lora(folder / "lora", net, student.lora_adapter, timesteps=timesteps, scheduler_options=options,
                    base_model=card["base_model"], call_options=calls, recipe=student.name, tags=tuple(student.tags),
                    record=student.record())
    return folder


def _class(student, folder: Path, card: dict) -> Path:
    spec = student.sampler
    return export_class_conditional(folder, student.generator.net, student.teacher.scheduler_config,
                                    timesteps=spec.exported_times(), null_label=student.conditioner.null_label,
                                    model_card=card, scheduler_options=spec.scheduler_options(),
                                    adapter=student.lora_adapter, record=student.record())


def _super_resolution(student, folder: Path, card: dict) -> Path:
    spec = student.sampler
    if spec.scheduler_options():
        raise ValueError("the super-resolution pipeline runs the plain multistep sampler; this student samples "
                         f"with {spec.scheduler_options()}")
    return export_super_resolution(folder, student.generator.net, student.teacher.scheduler_config,
                                   timesteps=spec.exported_times(), sr_scale=student.conditioner.scale,
                                   residual=student.generator.denoiser.residual, model_card=card,
                                   adapter=student.lora_adapter, record=student.record())


EXPORTERS = {"text": _text, "class": _class, "lr": _super_resolution}


def check_exportable(students: list) -> None:
    """Before any training: every student has an exporter for its condition and a sampler a stock scheduler runs
    (a 'cm' consistency boundary has none); else one line naming `export.enabled`."""
    for student in students:
        for one in student.members:
            kind = one.conditioner.kind
            if kind not in EXPORTERS:
                raise ValueError(f"export.enabled: no export for a student conditioned by "
                                 f"{type(one.conditioner).__name__} (exporters: {', '.join(sorted(EXPORTERS))}); "
                                 "set export.enabled=false")
            try:
                one.sampler.scheduler_options()
            except ValueError as e:
                raise ValueError(f"export.enabled: {e}; or set export.enabled=false") from None


def export_student(student, folder: str | Path, model_card: dict | None = None) -> Path:
    check_exportable([student])
    return EXPORTERS[student.conditioner.kind](student, Path(folder), _card(student, model_card))


# ---------------------------------------------------------------------------------------------------------------
# several students routed by condition (multi-student distillation)


def _routed_class(routed, folder: Path, card: dict) -> Path:
    first = routed.students[0]
    return export_class_conditional(
        folder, [s.generator.net for s in routed.students], first.teacher.scheduler_config,
        timesteps=first.sampler.exported_times(), null_label=first.conditioner.null_label, model_card=card,
        owner=list(routed.routing["owner"]), scheduler_options=first.sampler.scheduler_options(),
        record=routed.record())


def _routed_text(routed, folder: Path, card: dict) -> Path:
    first, k = routed.students[0], len(routed.students)
    conditioner, owner = first.conditioner, routed.routing["owner"]
    embeddings = conditioner.embeddings(torch.arange(conditioner.num_classes)).double().mean(1)
    table = torch.tensor(owner)
    centroids = torch.stack([embeddings[table == j].mean(0) for j in range(k)])
    calls = conditioner.encoder.call_options()
    return export_routed_text_to_image(
        folder, first.teacher.root, [s.generator.net for s in routed.students],
        timesteps=first.sampler.exported_times(), prompts=list(conditioner.prompts), owner=list(owner),
        centroids=centroids, model_card=card, adapter=first.lora_adapter,
        scheduler_options=first.sampler.scheduler_options(), call_options=calls,
        record=routed.record())


ROUTED_EXPORTERS = {"class": _routed_class, "text": _routed_text}


def export_routed(routed, folder: str | Path, model_card: dict | None = None) -> Path:
    """One pipeline folder, loading in stock diffusers, whose pipeline routes each condition to its student
    (`routing["owner"]`; at most 8 students): class-conditional students route labels, text-to-image ones
    prompts (unseen prompts by their embedding, to the nearest student's mean). More students, or a kind without
    a routed pipeline: a folder per student and `routing.json`. The model card lists the partition."""
    folder = Path(folder)
    first, k = routed.students[0], len(routed.students)
    owner = routed.routing.get("owner")
    kind = first.conditioner.kind
    card = _card(first, model_card)
    parts = [[c for c, o in enumerate(owner or []) if o == j] for j in range(k)]
    describe = ((lambda part: f"prompts {', '.join(repr(first.conditioner.prompts[c]) for c in part)}")
                if kind == "text" else (lambda part: f"classes {part}"))
    card["extra"] = (card.get("extra", "") + "\n\n## Students\n\n" + "\n".join(
        f"- student {j}: {describe(part)}" for j, part in enumerate(parts))).strip()
    if owner is not None and k <= ROUTED_MAX_STUDENTS and kind in ROUTED_EXPORTERS \
            and all(s.conditioner.kind == kind for s in routed.students):
        return ROUTED_EXPORTERS[kind](routed, folder, card)
    for j, s in enumerate(routed.students):
        export_student(s, folder / f"student_{j}", model_card)
    atomic_write_text(folder / "routing.json", json.dumps(
        {"students": [f"student_{j}" for j in range(k)], **routed.routing}, indent=2) + "\n")
    return folder
