"""What produced a cached teacher output: the teacher (where it came from and a digest of its weights) and the
data (prompt file, image folder, degradation, patches). A cache records these beside its solver settings and
is reused only when all of them match, so a run never trains on another teacher's or other data's outputs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

# Values sampled from each tensor for the weights digest: enough that two trainings (or seeds) of one
# architecture never agree, cheap for a multi-gigabyte teacher (no full pass over its weights).
SAMPLES_PER_TENSOR = 4096


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a network's weights: every tensor's name, shape and dtype, and evenly spaced values."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().reshape(-1)
        # float32 positions (the recorded digests'); above 2**24 elements the last one can round up to len(flat)
        at = torch.linspace(0, len(flat) - 1, min(len(flat), SAMPLES_PER_TENSOR), device=flat.device).long()
        picked = flat[at.clamp_(max=len(flat) - 1)] if len(flat) else flat
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(picked.to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def folder_digest(folder: str | Path) -> str:
    """A digest of a folder's files: relative names, sizes and modification times (not their bytes)."""
    root = Path(folder)
    return files_digest(sorted(q for q in root.rglob("*") if q.is_file()), root)


def files_digest(paths: list[Path], root: Path | None = None) -> str:
    """A digest of files' names (relative to `root`), sizes and modification times, in the given order."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(root) if root else p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def run_identity(teacher, data) -> dict[str, str]:
    """The teacher's and the data's identity (`Teacher`, `DataConfig`) as strings, for cache metadata."""
    identity = {"teacher": str(teacher.source), "teacher_root": str(teacher.root),
                "teacher_weights": weights_digest(teacher.net)}
    if data.prompts is not None and Path(data.prompts).is_file():
        identity["prompts"] = file_digest(data.prompts)
    if data.images is not None and Path(data.images).is_dir():
        identity["images"] = folder_digest(data.images)
    if data.dataset is not None:  # a save_to_disk folder by its files; a Hub dataset by its name
        identity["dataset"] = folder_digest(data.dataset) if Path(data.dataset).is_dir() else data.dataset
    if data.precomputed is not None and Path(data.precomputed).is_dir():
        identity["precomputed"] = folder_digest(data.precomputed)
    if data.shards is not None:
        from .data.paired import expand_shards

        identity["shards"] = files_digest(expand_shards(data.shards))
    for key in ("resolution", "embedded_guidance", "image_channels", "condition_scale", "degradation_blur",
                "degradation_noise", "degradation_jpeg", "patches", "split", "image_column", "caption_column",
                "label_column", "center_crop", "random_flip"):
        identity[f"data.{key}"] = str(getattr(data, key))
    return identity
