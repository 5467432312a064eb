"""A folder of user images as a `Dataset` of `{"images": (C, H, W) in [-1, 1]}` (+ `class_labels`).

Layouts: either all images somewhere under `root` (unconditional), or one sub-folder per class
(`root/<class>/**/*.png`, classes sorted by name -> 0..K-1). Problems (missing root, no images,
mixed layout, corrupt files) are raised at construction, before any training step runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class CorruptImageError(ValueError):
    """An image file that PIL cannot read; the message names the file and PIL's reason."""


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: Path, channels: Literal[3, 1] = 3) -> Image.Image:
    """An image file, upright (EXIF rotation applied), as RGB or L; an unreadable one is a `CorruptImageError`."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # camera JPEGs store rotation in EXIF
            return im.convert("RGB" if channels == 3 else "L")
    except Exception as e:  # verify() does not decode pixels, so truncation shows up here
        raise CorruptImageError(f"corrupt image {path}: {e}") from e


def _to_tensor(im: Image.Image) -> torch.Tensor:
    """(C, H, W) float in [-1, 1]."""
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def _find_images(folder: Path) -> list[Path]:
    # Sorted so that indices (and hence seeded sampling) are the same on every machine.
    return sorted(p for p in folder.rglob("*") if _is_image(p))


class ImageFolder(Dataset):
    """Images under `root`, resized (shorter side, Lanczos) and cropped to `resolution` squared."""

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        *,
        channels: Literal[3, 1] = 3,
        center_crop: bool = True,
        random_flip: bool = False,
        verify: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not isinstance(resolution, int) or resolution <= 0:
            raise ValueError(f"resolution must be a positive int, got {resolution!r}")
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder does not exist: {self.root}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder is not a directory: {self.root}")
        self.resolution, self.channels = resolution, channels
        self.center_crop, self.random_flip = center_crop, random_flip

        # A class is a sub-folder with images anywhere below it (walked once: folders can be large).
        per_dir = {d: _find_images(d) for d in sorted(self.root.iterdir()) if d.is_dir()}
        class_dirs = [d for d, found in per_dir.items() if found]
        if class_dirs:
            loose = sorted(p.name for p in self.root.iterdir() if _is_image(p))
            if loose:
                raise ValueError(
                    f"{self.root} has class sub-folders but also images directly in it: "
                    f"{', '.join(loose[:5])}{' ...' if len(loose) > 5 else ''}; "
                    "move them into a class sub-folder (or flatten the layout)"
                )
            self.classes = [d.name for d in class_dirs]
            self.paths, labels = [], []
            for index, d in enumerate(class_dirs):
                found = per_dir[d]
                self.paths += found
                labels += [index] * len(found)
            self.labels: list[int] | None = labels
        else:
            self.classes, self.labels = [], None
            self.paths = _find_images(self.root)
        if not self.paths:
            raise FileNotFoundError(
                f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {self.root}"
            )
        if verify:
            for path in self.paths:
                try:
                    with Image.open(path) as im:
                        im.verify()  # reads headers and checksums only: cheap, no decode
                except Exception as e:  # PIL raises several unrelated types for bad files
                    raise CorruptImageError(f"corrupt image {path}: {e}") from e

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path) -> Image.Image:
        return read_image(path, self.channels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        im = self._load(self.paths[index])
        r = self.resolution
        w, h = im.size
        scale = r / min(w, h)
        # max(r, ...) guards against rounding the shorter side to r - 1.
        size = (max(r, round(w * scale)), max(r, round(h * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
        if self.center_crop:
            left, top = (size[0] - r) // 2, (size[1] - r) // 2
        else:  # torch RNG, so DataLoader's per-worker seeding applies
            left = int(torch.randint(0, size[0] - r + 1, ()))
            top = int(torch.randint(0, size[1] - r + 1, ()))
        im = im.crop((left, top, left + r, top + r))
        x = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        x = x.float().div(127.5).sub(1.0).contiguous()
        if self.random_flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        item = {"images": x}
        if self.labels is not None:
            item["class_labels"] = torch.tensor(self.labels[index], dtype=torch.long)
        return item


class FolderPairs(Dataset):
    """Low-resolution images in a folder (its own files, sorted by name) and, with `hr_dir`, the high-resolution
    image of the same name: items {"lr", "images"} in [-1, 1], at their own sizes (super-resolution inputs; no
    resizing). Without `hr_dir`, "images" is an all-zero placeholder of the output's size (nothing to score
    against). All LR images share one size (they are batched); every mismatch is raised here, before any work."""

    def __init__(self, lr_dir: str | Path, scale: int, hr_dir: str | Path | None = None):
        lr_dir = Path(lr_dir)
        if not lr_dir.is_dir():
            raise ValueError(f"--lr-dir {lr_dir} is not a folder")
        paths = sorted(p for p in lr_dir.iterdir() if _is_image(p))
        if not paths:
            raise ValueError(f"{lr_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.scale, self.names = int(scale), [p.stem for p in paths]
        self.lr = [_to_tensor(read_image(p)) for p in paths]
        sizes = {tuple(x.shape[-2:]) for x in self.lr}
        if len(sizes) > 1:
            raise ValueError(f"the LR images in {lr_dir} have several sizes {sorted(sizes)}; crop them to one")
        h, w = sizes.pop()
        self.hr_size = (h * self.scale, w * self.scale)
        self.hr = None if hr_dir is None else [self._hr(Path(hr_dir), p.stem) for p in paths]

    def _hr(self, hr_dir: Path, stem: str) -> torch.Tensor:
        match = [q for q in sorted(hr_dir.glob(stem + ".*")) if _is_image(q)]
        if not match:
            raise ValueError(f"no high-resolution image named {stem} in {hr_dir}")
        hr = _to_tensor(read_image(match[0]))
        if tuple(hr.shape[-2:]) != self.hr_size:
            raise ValueError(f"{match[0]} is {tuple(hr.shape[-2:])}; x{self.scale} of its LR image is {self.hr_size}")
        return hr

    def __len__(self) -> int:
        return len(self.lr)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        hr = self.hr[i] if self.hr is not None else torch.zeros(3, *self.hr_size)
        return {"lr": self.lr[i], "images": hr}
