"""The project's embedded training data, and which of it a teacher folder was trained on.

A teacher trained by `recipes/train_teacher.py` records its data in `train_config.yaml` (`data: digits` or
`data: patches`; a record without the key is the digits teacher's, the recipe's default). A recipe that needs real
images and is given no `data.images` draws them from that embedded set: the digits split the teacher saw, or the
natural-image training patches degraded as the teacher's condition. Any other teacher needs `data.images`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["trained_on", "embedded_dataset", "EMBEDDED"]

TRAIN_CONFIG = "train_config.yaml"


def trained_on(teacher_folder: str | Path | None) -> str | None:
    """The embedded data a teacher folder was trained on ("digits", "patches"), or None."""
    import yaml

    path = Path(teacher_folder) / TRAIN_CONFIG if teacher_folder else None
    if path is None or not path.is_file():
        return None
    return (yaml.safe_load(path.read_text()) or {}).get("data", "digits")


def _digits(teacher_folder, resolution: int, degradation, data):
    from .digits import DigitsDataset, training_split

    return DigitsDataset(resolution, split=training_split(teacher_folder))


def _patches(teacher_folder, resolution: int, degradation, data):
    from .patches import PatchDataset

    if degradation is None:
        raise ValueError("the natural-image patches train a super-resolution teacher: this teacher has no "
                         "low-resolution condition (data.condition_scale); set data.images")
    return PatchDataset(resolution, scale=degradation.scale, num_patches=data.patches, split="train",
                        degradation=degradation)


EMBEDDED = {"digits": _digits, "patches": _patches}


def embedded_dataset(teacher_folder, resolution: int, degradation, data):
    """The embedded set the teacher was trained on, at `resolution`, or None where it records none."""
    source = trained_on(teacher_folder)
    if source is None:
        return None
    if source not in EMBEDDED:
        raise ValueError(f"{Path(teacher_folder) / TRAIN_CONFIG} names data {source!r}; embedded: {sorted(EMBEDDED)}")
    return EMBEDDED[source](teacher_folder, resolution, degradation, data)
