"""FID and KID through clean-fid (Parmar et al. 2022), with the Inception weights under our control.

Modes (clean-fid's): `clean` (TorchScript Inception, PIL bicubic resize to 299 outside the network),
`legacy_tensorflow` (same network, TF-style resize inside it), `legacy_pytorch` (pytorch-fid's
InceptionV3). Weights: clean-fid downloads the TorchScript file into a fixed folder (/tmp) and the
pytorch-fid file into torch hub's cache. `inception_weights=PATH` places a local copy there (a
symlink) instead; offline without a copy, `InceptionWeightsError` says where the file must go.
A `feature_extractor` (uint8-range NCHW float batch -> (N, D) features) replaces Inception entirely.

Statistics: features of a folder (or a .zip) -> `FeatureStats` (mu, sigma, the features for KID),
cached as npz by `eval/evaluate.py ref`. FID is `stepdistill.metrics.frechet_distance`; KID is
clean-fid's `kernel_distance` (subsets of at most 1,000, cubic kernel).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

from ..metrics import frechet_distance, gaussian_stats

__all__ = ["FidConfig", "FeatureStats", "InceptionWeightsError", "feature_model", "folder_features",
           "features_to_stats", "fid_kid", "INCEPTION_FILES"]

Mode = Literal["clean", "legacy_tensorflow", "legacy_pytorch"]
FeatureFn = Callable[[torch.Tensor], torch.Tensor]

# Where clean-fid itself looks (cleanfid.features.feature_extractor / inception_pytorch.fid_inception_v3).
CLEANFID_INCEPTION_DIR = Path("./" if platform.system() == "Windows" else "/tmp")
INCEPTION_FILES = {
    "torchscript": ("inception-2015-12-05.pt",
                    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"),
    "pytorch": ("pt_inception-2015-12-05-6726825d.pth",
                "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"),
}


class InceptionWeightsError(RuntimeError):
    """The Inception weights are neither where clean-fid looks nor downloadable."""


@dataclass(frozen=True)
class FidConfig:
    mode: Mode = "clean"
    inception_weights: Optional[str] = None  # a local weights file; None: clean-fid's own download
    batch_size: int = 64
    num_workers: int = 0
    kid_subsets: int = 100
    kid_subset_size: int = 1000


@dataclass
class FeatureStats:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray  # kept for KID
    settings: dict

    def save(self, path: str | Path) -> Path:
        import json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mu=self.mu, sigma=self.sigma, features=self.features, settings=json.dumps(self.settings))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        import json

        with np.load(path) as f:
            return cls(f["mu"], f["sigma"], f["features"], json.loads(str(f["settings"])))


def _weights_kind(mode: Mode) -> str:
    return "pytorch" if mode == "legacy_pytorch" else "torchscript"


def expected_weights_path(mode: Mode) -> Path:
    """The file clean-fid loads for `mode` (and downloads there if it is missing)."""
    name = INCEPTION_FILES[_weights_kind(mode)][0]
    if mode == "legacy_pytorch":
        return Path(torch.hub.get_dir()) / "checkpoints" / name
    return CLEANFID_INCEPTION_DIR / name


def _place_weights(src: str | Path, dest: Path) -> None:
    src = Path(src).expanduser().resolve()
    if not src.is_file():
        raise InceptionWeightsError(f"inception_weights={str(src)!r} does not exist; give the path of "
                                    f"{dest.name} ({INCEPTION_FILES[_weights_kind_of(dest)][1]})")
    if dest.resolve() == src:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    dest.symlink_to(src)


def _weights_kind_of(dest: Path) -> str:
    return next(k for k, (name, _) in INCEPTION_FILES.items() if name == dest.name)


def feature_model(cfg: FidConfig, device: torch.device | str = "cpu") -> FeatureFn:
    """clean-fid's Inception for `cfg.mode`, from `cfg.inception_weights` if given."""
    from cleanfid.inception_pytorch import InceptionV3
    from cleanfid.inception_torchscript import InceptionV3W

    if cfg.mode not in ("clean", "legacy_tensorflow", "legacy_pytorch"):
        raise ValueError(f"unknown clean-fid mode {cfg.mode!r}; expected clean, legacy_tensorflow or legacy_pytorch")
    dest = expected_weights_path(cfg.mode)
    if cfg.inception_weights:
        _place_weights(cfg.inception_weights, dest)
    try:
        if cfg.mode == "legacy_pytorch":
            net = InceptionV3(output_blocks=[3], resize_input=False).to(device).eval()
            return lambda x: net(x / 255)[0].squeeze(-1).squeeze(-1)
        net = InceptionV3W(str(dest.parent), download=True, resize_inside=cfg.mode == "legacy_tensorflow").to(device)
        return net.eval()
    except Exception as e:  # noqa: BLE001 - urllib, requests, hub and jit errors all mean the same here
        name, url = INCEPTION_FILES[_weights_kind(cfg.mode)]
        raise InceptionWeightsError(
            f"clean-fid mode {cfg.mode!r} needs the Inception weights {name}, which are not at {dest} and could not "
            f"be downloaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Download {url} "
            f"where there is network access and pass its path with --inception-weights PATH "
            f"(FidConfig.inception_weights), or copy it to {dest}.") from None


def folder_features(folder: str | Path, cfg: FidConfig, *, feature_extractor: FeatureFn | None = None,
                    image_transform: Callable[[np.ndarray], np.ndarray] | None = None, num: int | None = None,
                    device: torch.device | str = "cpu", verbose: bool = True) -> np.ndarray:
    """(N, D) features of every image in `folder` (sorted names; PNG/JPEG/..., or a .zip), resized the
    way `cfg.mode` prescribes. `image_transform` (uint8 HWC -> uint8 HWC) runs first, e.g. the COCO
    center-crop + Lanczos 256."""
    from cleanfid.fid import get_folder_features

    model = feature_extractor or feature_model(cfg, device)
    return get_folder_features(str(folder), model, num_workers=cfg.num_workers, num=num, batch_size=cfg.batch_size,
                               device=torch.device(device), mode=cfg.mode, custom_image_tranform=image_transform,
                               description=f"features {Path(folder).name}: ", verbose=verbose)


def array_features(images: np.ndarray, cfg: FidConfig, *, feature_extractor: FeatureFn | None = None,
                   device: torch.device | str = "cpu") -> np.ndarray:
    """Features of uint8 NHWC images held in memory (e.g. an ImageNet reference batch `arr_0`), resized
    exactly as clean-fid resizes files (its `ResizeDataset` transform, minus the file reading)."""
    from cleanfid.resize import build_resizer

    model = feature_extractor or feature_model(cfg, device)
    resize = build_resizer(cfg.mode)
    feats = []
    for start in range(0, len(images), cfg.batch_size):
        chunk = images[start:start + cfg.batch_size]
        if chunk.shape[-1] == 1:
            chunk = np.repeat(chunk, 3, axis=-1)
        batch = torch.from_numpy(np.stack([resize(im).transpose(2, 0, 1) for im in chunk])).float()
        with torch.no_grad():
            feats.append(model(batch.to(device)).cpu().numpy())
    return np.concatenate(feats)


def features_to_stats(features: np.ndarray, settings: dict) -> FeatureStats:
    mu, sigma = gaussian_stats(features)
    return FeatureStats(mu, sigma, np.asarray(features, np.float32), settings)


def fid_kid(gen: FeatureStats, ref: FeatureStats, cfg: FidConfig) -> dict[str, float]:
    """FID (Frechet distance of the two Gaussians) and KID (x 1e3 is the usual print; here raw)."""
    from cleanfid.fid import kernel_distance

    fid = frechet_distance(gen.mu, gen.sigma, ref.mu, ref.sigma)
    kid = float(kernel_distance(ref.features, gen.features, num_subsets=cfg.kid_subsets,
                                max_subset_size=cfg.kid_subset_size))
    return dict(fid=fid, kid=kid)


def settings(cfg: FidConfig, feature_extractor: FeatureFn | None) -> dict:
    """What a FID number needs next to it to be reproducible."""
    import cleanfid

    out = asdict(cfg)
    out.update(library=f"clean-fid {getattr(cleanfid, '__version__', '?')}",
               features="custom" if feature_extractor else f"inception-v3 ({INCEPTION_FILES[_weights_kind(cfg.mode)][0]})")
    return out
