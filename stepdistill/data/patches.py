"""Natural-image patches for super-resolution, from images bundled with scikit-image / scikit-learn.

Nothing is downloaded: only images that ship inside the installed packages are used. The split is by
source image (`TEST_IMAGES` are held out whole), so train and test patches never share pixels.
"""
from __future__ import annotations

import functools
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ..degradations import Degradation

# Photographs shipped inside scikit-image (no pooch download); any that fail to load are skipped.
SKIMAGE_IMAGES = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "moon", "rocket",
)
# Held out whole for split="test"; sklearn's "flower" always loads, so the test split is never empty.
TEST_IMAGES = frozenset({"coffee", "flower"})
MIN_SKIMAGE_IMAGES = 5


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    image.setflags(write=False)  # shared by the cache: nobody may modify it in place
    return image


@functools.lru_cache(maxsize=1)
def _named_images() -> tuple[tuple[str, np.ndarray], ...]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    named, skipped = [], []
    for name in SKIMAGE_IMAGES:
        try:
            named.append((name, _to_rgb(getattr(skimage.data, name)())))
        except Exception:  # absent in this skimage version, or would need a download
            skipped.append(name)
    if len(named) < MIN_SKIMAGE_IMAGES:
        raise FileNotFoundError(
            f"only {len(named)} scikit-image sample images load (need {MIN_SKIMAGE_IMAGES}); "
            f"missing: {', '.join(skipped)}"
        )
    bunch = load_sample_images()  # "china" and "flower", always bundled with scikit-learn
    for path, image in zip(bunch.filenames, bunch.images):
        name = path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        named.append((name, _to_rgb(image)))
    return tuple(named)


def natural_image_names() -> list[str]:
    """Names of the images `natural_images()` returns, in the same order."""
    return [name for name, _ in _named_images()]


@functools.lru_cache(maxsize=16)
def _reduced(name: str, factor: float) -> np.ndarray:
    """Bundled image `name` reduced by `factor` (antialiased bicubic, uint8, read-only), cached."""
    image = dict(_named_images())[name]
    if factor == 1:
        return image
    x = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, scale_factor=factor, mode="bicubic", antialias=True, align_corners=False)
    out = np.ascontiguousarray(x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    out.setflags(write=False)
    return out


def _detail(crops: np.ndarray, scale: int) -> np.ndarray:
    """(N, P, P, 3) uint8 -> (N,) RMS in 8-bit levels of what bicubic down- and up-sampling by `scale` loses."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
    size = x.shape[-2:]
    low = torch.nn.functional.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True)
    up = torch.nn.functional.interpolate(low, size=size, mode="bicubic")
    return (x - up).square().mean(dim=(1, 2, 3)).sqrt().numpy()


def natural_images() -> list[np.ndarray]:
    """The bundled natural images as read-only uint8 (H, W, 3) arrays (loaded once, then cached)."""
    return [image for _, image in _named_images()]


class PatchDataset(Dataset):
    """`{"images": (3, P, P), "lr": (3, P/scale, P/scale)}` in [-1, 1], from fixed random crops.

    The split's images are first reduced by `source_scale` (antialiased bicubic): at their native size these
    photographs are smooth (JPEG-softened, shallow depth of field), and a x4 bicubic upsample of a native
    32-pixel crop already scores ~39 dB; at half size a crop holds twice the detail per pixel. Patch positions
    are then drawn once from `numpy.random.default_rng(seed)`, uniformly over all valid crop positions, and
    crops with less detail than `min_detail` are redrawn, as SR training pipelines discard low-texture patches:
    detail is the RMS, in 8-bit levels, of what a bicubic round trip through the LR size loses (the test
    crops are bimodal: ~1 level for sky and bokeh, 10-20 for texture). `lr` is `degradation` of the high-resolution patch `images` with the
    patch's index as its seed (default: the antialiased bicubic downsample by `scale`).
    """

    def __init__(
        self,
        patch_size: int = 64,
        *,
        scale: int = 4,
        num_patches: int = 2048,
        split: Literal["train", "test"] = "train",
        seed: int = 0,
        degradation: Degradation | None = None,
        source_scale: float = 0.5,
        min_detail: float = 4.0,
    ) -> None:
        degradation = degradation or Degradation(scale)
        if degradation.scale != scale:
            raise ValueError(f"the degradation's scale {degradation.scale} differs from the patches' {scale}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if patch_size <= 0 or scale <= 0 or num_patches <= 0:
            raise ValueError(
                "patch_size, scale, num_patches must be positive, "
                f"got {patch_size}, {scale}, {num_patches}"
            )
        if patch_size % scale:
            raise ValueError(f"patch_size ({patch_size}) must be divisible by scale ({scale})")
        if not 0 < source_scale <= 1 or min_detail < 0:
            raise ValueError(f"source_scale must lie in (0, 1] and min_detail be >= 0, got {source_scale}, {min_detail}")
        named = [(n, _reduced(n, source_scale)) for n, _ in _named_images() if (n in TEST_IMAGES) == (split == "test")]
        for name, image in named:
            if min(image.shape[:2]) < patch_size:
                raise ValueError(
                    f"patch_size {patch_size} does not fit image {name!r} of size {image.shape[:2]}"
                )
        self.patch_size, self.scale, self.split, self.degradation = patch_size, scale, split, degradation
        self.source_names = [n for n, _ in named]
        self._images = [im for _, im in named]

        rng = np.random.default_rng(seed)
        # Weight images by their number of crop positions so every valid crop is equally likely.
        rows = np.array([im.shape[0] - patch_size + 1 for im in self._images])
        cols = np.array([im.shape[1] - patch_size + 1 for im in self._images])
        counts = rows * cols
        kept: list[np.ndarray] = []
        for _ in range(100):  # rounds of candidates; textured crops are common, so few rounds are needed
            source = rng.choice(len(self._images), size=num_patches, p=counts / counts.sum())
            top = rng.integers(0, rows[source])
            left = rng.integers(0, cols[source])
            candidates = np.stack([source, top, left], axis=1)
            detail = _detail(np.stack([self._crop(*c) for c in candidates]), scale)
            kept += [c for c, d in zip(candidates, detail) if d >= min_detail]
            if len(kept) >= num_patches:
                break
        if len(kept) < num_patches:
            raise ValueError(f"only {len(kept)} crops of {patch_size} pixels have detail >= {min_detail}")
        self.positions = np.stack(kept[:num_patches])  # (N, 3): image index, top, left

    def __len__(self) -> int:
        return len(self.positions)

    def _crop(self, source, top, left) -> np.ndarray:
        p = self.patch_size
        return self._images[int(source)][int(top) : int(top) + p, int(left) : int(left) + p]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        crop = self._crop(*self.positions[index])
        hr = torch.from_numpy(crop.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0).contiguous()
        return {"images": hr, "lr": self.degradation(hr[None], seeds=[index])[0]}


class IndexLabelled(Dataset):
    """`dataset` with each item labelled by its own index (`class_labels`): for an image-conditioned model,
    a real image's condition is its own degraded copy, which `LRConditioner` finds by that index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.dataset[index], "class_labels": torch.tensor(index)}
