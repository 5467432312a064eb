"""Reference statistics for the FID protocols, built once and cached as npz (`evaluate.py ref`).

A reference is a folder (or .zip) of images, an npz batch (`arr_0` uint8 NHWC, the guided-diffusion
ImageNet reference format), or clean-fid's named statistics (`cifar10/32/train`, downloaded by
clean-fid). Folder and npz references go through the same preprocessing as the generated images:
`center_crop_resize` to the protocol's resolution (Lanczos; the COCO protocol), then clean-fid's mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .fid import FeatureStats, FidConfig, FeatureFn, array_features, features_to_stats, folder_features, settings
from .protocols import Protocol

__all__ = ["center_crop_resize", "build_reference", "image_transform"]


def center_crop_resize(resolution: int, filter: str = "lanczos") -> Callable[[np.ndarray], np.ndarray]:
    """uint8 HWC -> the central square (side = the short edge), resized to `resolution` (GigaGAN's COCO)."""
    from PIL import Image

    resample = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[filter]

    def fn(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        im = Image.fromarray(img[top:top + s, left:left + s])
        if s != resolution:
            im = im.resize((resolution, resolution), resample=resample)
        return np.asarray(im)

    return fn


def image_transform(protocol: Protocol) -> Optional[Callable[[np.ndarray], np.ndarray]]:
    return center_crop_resize(protocol.resolution, protocol.resize_filter) if protocol.resolution else None


def images_features(images: np.ndarray, protocol: Protocol, cfg: FidConfig, feature_extractor=None,
                    device="cpu") -> np.ndarray:
    t = image_transform(protocol)
    if t is not None:
        images = np.stack([t(im if im.shape[-1] == 3 else np.repeat(im, 3, -1)) for im in images])
    return array_features(images, cfg, feature_extractor=feature_extractor, device=device)


def build_reference(protocol: Protocol, source: str | None, cfg: FidConfig, *,
                    feature_extractor: FeatureFn | None = None, device="cpu") -> FeatureStats:
    info = dict(protocol=protocol.name, reference=source, resolution=protocol.resolution,
                resize_filter=protocol.resize_filter if protocol.resolution else None,
                **settings(cfg, feature_extractor))
    if protocol.reference == "cleanfid" and (source is None or not Path(source).exists()):
        from cleanfid.features import get_reference_statistics

        name, res, split = (source or protocol.reference_name).split("/")
        try:
            mu, sigma = get_reference_statistics(name, int(res), mode=cfg.mode, split=split)
            feats = get_reference_statistics(name, int(res), mode=cfg.mode, split=split, metric="KID")
        except OSError as e:
            raise RuntimeError(f"clean-fid statistics {name}/{res}/{split} ({cfg.mode}) are not cached and could not "
                               f"be downloaded ({e}); pass --ref with a folder of the reference images") from None
        return FeatureStats(mu, sigma, feats, {**info, "reference": f"clean-fid {name}/{res}/{split}"})
    if source is None:
        raise ValueError(f"protocol {protocol.name} needs --ref (a reference image folder, .zip or npz batch)")
    path = Path(source)
    if path.suffix == ".npz":
        with np.load(path) as f:
            images = f["arr_0"]
        feats = images_features(images, protocol, cfg, feature_extractor, device)
    else:
        feats = folder_features(path, cfg, feature_extractor=feature_extractor,
                                image_transform=image_transform(protocol), num=None, device=device)
    return features_to_stats(feats, {**info, "num_images": int(len(feats))})
