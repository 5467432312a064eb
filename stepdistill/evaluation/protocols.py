"""Named evaluation protocols: what is generated, what it is compared with, and how.

Each preset pins the numbers a paper's table depends on: sample count, conditioning, reference set,
preprocessing and metrics. Paths a user must supply (COCO captions and images, the ImageNet reference
batch) are given on the command line; everything else is fixed here so rows stay comparable.

Image seeds: set `s` of a protocol with N images uses seeds s * N + i, i = 0..N-1, one generator per
image (`generate.py`), so an image depends on its seed only, not on batch size or process count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, Optional

__all__ = ["Protocol", "PROTOCOLS", "get_protocol"]


@dataclass(frozen=True)
class Protocol:
    name: str
    kind: Literal["digits", "fid"]
    num_images: int
    conditioning: Literal["class", "caption", "none"]
    num_classes: Optional[int] = None  # class conditioning: image i gets label i % num_classes
    set_seeds: tuple[int, ...] = (0,)  # FD/FID is reported as mean and std over these sets
    reference: Literal["digits", "folder", "npz", "cleanfid"] = "folder"
    reference_name: Optional[str] = None  # clean-fid named statistics (dataset, resolution, split)
    resolution: Optional[int] = None  # center-crop + resize both sides to this before the metric
    resize_filter: str = "lanczos"
    fid_mode: str = "clean"
    clip_score: bool = False
    image_format: Literal["png", "npz"] = "png"
    description: str = ""

    def with_overrides(self, **kw) -> "Protocol":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


PROTOCOLS = {p.name: p for p in [
    Protocol("digits", "digits", num_images=1000, conditioning="class", num_classes=10, set_seeds=(0, 1, 2),
             reference="digits", image_format="npz",
             description="the embedded digits benchmark: FD / KID / precision / recall / accuracy on the shipped "
                         "classifier's features, FD2 on its pooled third convolution, against the 797-image reference "
                         "split, class-balanced (stepdistill.digits_benchmark)"),
    Protocol("coco2014_30k", "fid", num_images=30_000, conditioning="caption", reference="folder", resolution=256,
             clip_score=True,
             description="COCO-2014 val zero-shot: 30K captions, FID (clean-fid, clean) against the val2014 images, "
                         "both center-cropped and Lanczos-resized to 256; CLIP score on the same captions"),
    Protocol("coco2017_5k", "fid", num_images=5_000, conditioning="caption", reference="folder", resolution=256,
             clip_score=True,
             description="COCO-2017 val: the 5K captions (one per image), FID against val2017 at 256, CLIP score"),
    Protocol("imagenet64_fid50k", "fid", num_images=50_000, conditioning="class", num_classes=1000, reference="npz",
             image_format="npz",
             description="ImageNet 64x64 FID-50K: 50K class-balanced samples against a reference batch npz "
                         "(arr_0 uint8 NHWC), clean-fid features of both"),
    Protocol("cifar10_train", "fid", num_images=50_000, conditioning="class", num_classes=10, reference="cleanfid",
             reference_name="cifar10/32/train", fid_mode="legacy_tensorflow",
             description="CIFAR-10 FID-50K against the 50K training images (clean-fid's cifar10 train statistics, "
                         "or a folder of the training images)"),
]}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def image_seeds(protocol: Protocol, set_seed: int) -> list[int]:
    n = protocol.num_images
    return list(range(set_seed * n, (set_seed + 1) * n))


def conditions(protocol: Protocol, captions: list[str] | None = None) -> list:
    """Per-image conditioning, in image order: class labels, captions, or None."""
    n = protocol.num_images
    if protocol.conditioning == "class":
        return [i % protocol.num_classes for i in range(n)]
    if protocol.conditioning == "caption":
        if captions is None:
            raise ValueError(f"protocol {protocol.name} needs captions: pass --captions FILE (one per line, or a "
                             "COCO captions_*.json annotation file)")
        if len(captions) < n:
            raise ValueError(f"protocol {protocol.name} needs {n} captions; the file has {len(captions)}")
        return list(captions[:n])
    return [None] * n


def read_captions(path: str) -> list[str]:
    """One caption per line, or a COCO annotation file (the first caption of each image, by image id)."""
    import json
    from pathlib import Path

    p = Path(path)
    if p.suffix == ".json":
        try:
            annotations = json.loads(p.read_text())["annotations"]
            first: dict[int, str] = {}
            # by caption id where the file has them (COCO's), else in file order
            for _, a in sorted(enumerate(annotations), key=lambda e: (e[1]["image_id"], e[1].get("id", e[0]))):
                first.setdefault(a["image_id"], a["caption"].strip())
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"--captions {p}: not a COCO captions file (annotations with image_id and caption): "
                             f"{type(e).__name__}: {e}") from None
        return [first[k] for k in sorted(first)]
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]
