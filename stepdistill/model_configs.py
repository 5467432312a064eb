"""The real-model presets' architecture configs (`assets/model_configs/`), and full-size networks built from them
offline: no hub, no weights, nothing allocated by default (the `meta` device).

Each folder mirrors one hub repository's component configs (`<component>/config.json`, `scheduler/
scheduler_config.json`, `model_index.json`); `assets/model_configs/README.md` cites the repositories and lists the
parameter counts that `python -m stepdistill.model_configs` measures.

    from stepdistill.model_configs import build, parameter_count
    unet = build("sd15", "unet")                      # UNet2DConditionModel on meta: shapes, no memory
    parameter_count("flux_dev", "transformer")        # 11.9 B
    build("sd15", "unet", device="cpu")               # the full-size network, random init, float32
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

__all__ = ["HUB_IDS", "MODEL_CONFIGS", "build", "component_class", "parameter_count", "preset_model"]

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "model_configs"

# name -> folder of its configs
MODEL_CONFIGS: dict[str, Path] = {name: ASSETS / name for name in (
    "sd15", "sd21_base", "sdxl", "sd3_medium", "flux_dev", "edm_imagenet64", "cifar10_cond_ddpm")}

# name -> the hub repository the folder mirrors (None: no diffusers release; see the README)
HUB_IDS: dict[str, str | None] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21_base": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "sd3_medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "flux_dev": "black-forest-labs/FLUX.1-dev",
    "edm_imagenet64": None,
    "cifar10_cond_ddpm": None,
}


def _folder(name: str) -> Path:
    if name not in MODEL_CONFIGS:
        raise KeyError(f"no shipped model config {name!r}; shipped: {', '.join(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[name]


def preset_model(name: str) -> dict[str, Path]:
    """The components of shipped model `name`, each mapped to its config folder (the scheduler's included)."""
    folder = _folder(name)
    return {sub.name: sub for sub in sorted(folder.iterdir())
            if (sub / "config.json").is_file() or (sub / "scheduler_config.json").is_file()}


def _config_file(name: str, component: str) -> Path:
    components = preset_model(name)
    if component not in components:
        raise KeyError(f"{name} has no component {component!r}; it has: {', '.join(components)}")
    path = components[component] / "config.json"
    if not path.is_file():
        raise ValueError(f"{name}/{component} is a scheduler, not a network")
    return path


def component_class(name: str, component: str) -> type:
    """The class the component's config names: diffusers' `_class_name` or transformers' `architectures[0]`."""
    config = json.loads(_config_file(name, component).read_text())
    if "_class_name" in config:
        import diffusers

        return getattr(diffusers, config["_class_name"])
    import transformers

    return getattr(transformers, config["architectures"][0])


def build(name: str, component: str, *, device: str | torch.device = "meta", dtype: torch.dtype | None = None
          ) -> nn.Module:
    """The component of shipped model `name` built from its config with fresh (random) weights, on `device`
    ("meta" by default: shapes only, nothing allocated), in `dtype` (None: float32 for every component; the text
    encoders' configs record the dtype their weights were saved in, which is not used here)."""
    path = _config_file(name, component)
    cls = component_class(name, component)
    dtype, default = dtype or torch.float32, torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in it: nothing made in float32 first
    try:
        with torch.device(device):
            if hasattr(cls, "config_class"):  # transformers: its own config class reads the file, no hub
                model = cls._from_config(cls.config_class.from_json_file(str(path)), dtype=dtype)
            else:
                model = cls.from_config(cls.load_config(str(path.parent)))
    finally:
        torch.set_default_dtype(default)
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype)
    return model.eval()


def parameter_count(name: str, component: str) -> int:
    """Parameters of the component (tied weights counted once), measured on the meta device."""
    return sum(p.numel() for p in build(name, component).parameters())


def _main() -> None:
    print("| model | component | class | parameters |\n|---|---|---|---:|")
    for name in MODEL_CONFIGS:
        for component, folder in preset_model(name).items():
            if (folder / "config.json").is_file():
                count = parameter_count(name, component)
                print(f"| `{name}` | `{component}` | `{component_class(name, component).__name__}` | "
                      f"{count:,} ({count / 1e6:,.2f} M) |")


if __name__ == "__main__":
    _main()
