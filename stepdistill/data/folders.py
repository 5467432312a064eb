"""A folder of user images as a `Dataset` of `{"images": (C, H, W) in [-1, 1]}` (+ `class_labels`).

Layouts: either all images somewhere under `root` (unconditional), or one sub-folder per class
(`root/<class>/**/*.png`, classes sorted by name -> 0..K-1). Problems (missing root, no images,
mixed layout, corrupt files) are raised at construction, before any training step runs: every image is
decoded once, completely, so a truncated JPEG fails at setup with its name, not mid-run.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class CorruptImageError(ValueError):
    """An image file that PIL cannot read; the message names the file and PIL's reason."""


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def decoded(file, channels: Literal[3, 1] = 3) -> Image.Image:
    """An image (a path or a binary file object), upright (EXIF rotation applied), as RGB or L, every pixel decoded."""
    with Image.open(file) as im:
        im = ImageOps.exif_transpose(im)  # camera JPEGs store rotation in EXIF
        return im.convert("RGB" if channels == 3 else "L")


def read_image(path: Path, channels: Literal[3, 1] = 3) -> Image.Image:
    """`decoded(path)`; an unreadable file is a `CorruptImageError`."""
    try:
        return decoded(path, channels)
    except Exception as e:  # verify() does not decode pixels, so truncation shows up here
        raise CorruptImageError(f"corrupt image {path}: {e}") from e


def square_transform(resolution: int, channels: Literal[3, 1] = 3, *, center_crop: bool = True,
                     random_flip: bool = False):
    """PIL image -> (C, r, r) float tensor in [-1, 1]: the shorter side resized to r (Lanczos), a centre or random
    r x r crop, an optional horizontal flip (diffusers' training scripts' transform). Random crops and flips draw from
    torch's generator, which the real-image stream seeds per item (`stream.RealStream`)."""
    from torchvision.transforms import v2

    crop = v2.CenterCrop(resolution) if center_crop else v2.RandomCrop(resolution)
    return v2.Compose([v2.Resize(resolution, interpolation=v2.InterpolationMode.LANCZOS), crop,
                       *([v2.RandomHorizontalFlip()] if random_flip else []),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize([0.5] * channels, [0.5] * channels), _PlainTensor()])


class _PlainTensor(torch.nn.Module):
    """torchvision's `Image` tensor subclass -> a plain tensor (what collation and the networks expect)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.as_subclass(torch.Tensor).contiguous()


@contextlib.contextmanager
def strict_decoding() -> Iterator[None]:
    """PIL's `LOAD_TRUNCATED_IMAGES` off for the block (another library may have set it): truncation is an error."""
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def _decode_error(path: Path, channels: Literal[3, 1]) -> str | None:
    """Why `path` cannot be trained on (PIL's reason), or None: headers and checksums (`verify`, PNG's CRCs),
    then every pixel decoded and converted as `read_image` does (a truncated JPEG fails only here)."""
    try:
        with Image.open(path) as im:
            im.verify()
        read_image(path, channels)
    except Exception as e:  # PIL raises several unrelated types for bad files
        cause = e.__cause__ if isinstance(e, CorruptImageError) and e.__cause__ is not None else e
        return str(cause) or type(cause).__name__
    return None


# Folders at least this large show a progress bar while they are decoded.
PROGRESS_FROM = 1000


def keep_decodable(items: list, reason: Callable[[Any], str | None], describe: Callable[[Any], str], where: str,
                   *, skip: bool, desc: str = "checking images") -> list:
    """The `items` whose image decodes completely (`reason(item)` is None; else it says why), checked in a thread pool
    (PIL's decoders release the GIL) with PIL's truncation check on and a progress bar from `PROGRESS_FROM` items.
    A bad item is a `CorruptImageError` naming it (`describe`), or, with `skip`, is left out with one warning (all of
    them bad is an error still). `where`: the source, for the messages ("under ROOT", "in data.shards=...")."""
    from tqdm.auto import tqdm

    workers = min(8, os.cpu_count() or 1) if len(items) > 16 else 1
    with strict_decoding(), tqdm(total=len(items), desc=desc, unit="img", disable=len(items) < PROGRESS_FROM,
                                  leave=False) as bar:
        def check(item) -> str | None:
            why = reason(item)
            bar.update(1)
            return why

        if workers == 1:
            reasons = [check(x) for x in items]
        else:
            with ThreadPoolExecutor(workers) as pool:
                reasons = list(pool.map(check, items))
    bad = [(x, why) for x, why in zip(items, reasons) if why is not None]
    if not bad:
        return list(items)
    if not skip:
        more = f" ({len(bad) - 1} more corrupt image(s) {where})" if len(bad) > 1 else ""
        raise CorruptImageError(f"corrupt image {describe(bad[0][0])}: {bad[0][1]}{more}; remove it or set "
                                "data.skip_corrupt=true to skip corrupt images")
    if len(bad) == len(items):
        raise CorruptImageError(f"all {len(items)} images {where} are corrupt, e.g. {describe(bad[0][0])}: "
                                f"{bad[0][1]}")
    names = ", ".join(f"{describe(x)} ({why})" for x, why in bad[:5])
    warnings.warn(f"skipped {len(bad)} corrupt image(s) of {len(items)} {where} (data.skip_corrupt=true): "
                  f"{names}{' ...' if len(bad) > 5 else ''}", stacklevel=4)
    return [x for x, why in zip(items, reasons) if why is None]


def _to_tensor(im: Image.Image) -> torch.Tensor:
    """(C, H, W) float in [-1, 1]."""
    arr = np.asarray(im, dtype=np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def _find_images(folder: Path) -> list[Path]:
    # Sorted so that indices (and hence seeded sampling) are the same on every machine.
    return sorted(p for p in folder.rglob("*") if _is_image(p))


class ImageFolder(Dataset):
    """Images under `root`, resized (shorter side, Lanczos) and cropped to `resolution` squared.

    `verify`: decode every image at construction; a file that does not decode is a `CorruptImageError` naming it,
    or, with `skip_corrupt`, is left out (one warning gives the count and the first names)."""

    reads_files = True  # decoded in loader workers (`stream.RealStream`)

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        *,
        channels: Literal[3, 1] = 3,
        center_crop: bool = True,
        random_flip: bool = False,
        verify: bool = True,
        skip_corrupt: bool = False,
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
        self.transform = square_transform(resolution, channels, center_crop=center_crop, random_flip=random_flip)

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
            self._drop_corrupt(skip_corrupt)

    def _drop_corrupt(self, skip: bool) -> None:
        keep = keep_decodable(list(range(len(self.paths))), lambda i: _decode_error(self.paths[i], self.channels),
                              lambda i: str(self.paths[i]), f"under {self.root}", skip=skip,
                              desc=f"checking {self.root.name or self.root}")
        self.paths = [self.paths[i] for i in keep]
        if self.labels is not None:
            self.labels = [self.labels[i] for i in keep]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, path: Path) -> Image.Image:
        return read_image(path, self.channels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {"images": self.transform(self._load(self.paths[index]))}
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
