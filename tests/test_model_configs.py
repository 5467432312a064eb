"""The shipped real-model architecture configs (`assets/model_configs/`): every network builds offline from them at
its published size, its config is one its diffusers class reads without a stray key, and the schedulers and
pipeline indexes are ones the project reads."""

import ast
import json
import logging
from pathlib import Path

import pytest
import torch

from stepdistill import model_configs
from stepdistill.families import family_of_pipeline
from stepdistill.model_configs import (
    HUB_IDS,
    MODEL_CONFIGS,
    build,
    component_class,
    parameter_count,
    preset_model,
)
from stepdistill.schedules import from_scheduler_config

M = 1e6
CLIP_L, SD_VAE, T5_XXL, BIG_G = 123.06 * M, 83.65 * M, 4.76e9, 694.7 * M
# The published sizes. SD3's CLIP-L carries a 768x768 text projection (CLIPTextModelWithProjection) and SD3's and
# Flux's VAEs have 16 latent channels and no quant convs: 123.65 M and 83.82 M.
EXPECTED = {
    ("sd15", "unet"): 859.5 * M, ("sd15", "vae"): SD_VAE, ("sd15", "text_encoder"): CLIP_L,
    ("sd21_base", "unet"): 865.9 * M, ("sd21_base", "vae"): SD_VAE, ("sd21_base", "text_encoder"): 340.4 * M,
    ("sdxl", "unet"): 2.567e9, ("sdxl", "vae"): SD_VAE, ("sdxl", "text_encoder"): CLIP_L,
    ("sdxl", "text_encoder_2"): BIG_G,
    ("sd3_medium", "transformer"): 2.028e9, ("sd3_medium", "vae"): 83.82 * M,
    ("sd3_medium", "text_encoder"): CLIP_L + 768 * 768, ("sd3_medium", "text_encoder_2"): BIG_G,
    ("sd3_medium", "text_encoder_3"): T5_XXL,
    ("flux_dev", "transformer"): 11.90e9, ("flux_dev", "vae"): 83.82 * M, ("flux_dev", "text_encoder"): CLIP_L,
    ("flux_dev", "text_encoder_2"): T5_XXL,
    ("edm_imagenet64", "unet"): 296 * M,  # EDM (Karras et al. 2022): its ImageNet-64 ADM network, 296 M
    ("cifar10_cond_ddpm", "unet"): 35.75 * M,  # DDPM's CIFAR-10 network (Ho et al. 2020), 35.7 M, with 11 class rows
}
DENOISERS = [(name, c) for name in MODEL_CONFIGS for c in preset_model(name) if c in ("unet", "transformer")]
# the pipeline family and prediction type each preset's scheduler gives the project
SCHEDULES = {"sd15": ("sd", "epsilon"), "sd21_base": ("sd", "epsilon"), "sdxl": ("sdxl", "epsilon"),
             "sd3_medium": ("sd3", "flow"), "flux_dev": ("flux", "flow"), "edm_imagenet64": (None, "edm"),
             "cifar10_cond_ddpm": (None, "epsilon")}


def test_every_shipped_network_is_listed_once():
    networks = {(name, c) for name in MODEL_CONFIGS for c, folder in preset_model(name).items()
                if (folder / "config.json").is_file()}
    assert networks == set(EXPECTED)
    assert set(HUB_IDS) == set(MODEL_CONFIGS) == set(SCHEDULES)


@pytest.mark.parametrize("name,component", sorted(EXPECTED))
def test_each_network_builds_on_meta_at_its_published_size(name, component):
    net = build(name, component)
    assert all(p.is_meta for p in net.parameters())  # nothing allocated
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - EXPECTED[name, component]) <= 0.005 * EXPECTED[name, component], f"{count:,}"


def test_parameter_count_counts_the_built_network():
    assert parameter_count("sd15", "vae") == sum(p.numel() for p in build("sd15", "vae").parameters()) == 83_653_863


def test_networks_are_float32_unless_a_dtype_is_asked_for():
    # sd21_base's text encoder config records float16: its saved weights', not what build() makes
    for name, component in (("sd15", "vae"), ("sd21_base", "text_encoder")):
        assert {p.dtype for p in build(name, component).parameters()} == {torch.float32}
        assert {p.dtype for p in build(name, component, dtype=torch.bfloat16).parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("name,component", DENOISERS)
def test_the_denoiser_config_has_no_key_its_class_ignores(name, component, caplog):
    cls = component_class(name, component)
    config = json.loads((preset_model(name)[component] / "config.json").read_text())
    assert config["_class_name"] == cls.__name__
    with caplog.at_level(logging.WARNING):
        net = build(name, component)
    assert not [r for r in caplog.records if "not expected" in r.getMessage()]
    assert {k for k in config if not k.startswith("_")} <= set(net.config)
    assert all(net.config[k] == (tuple(v) if isinstance(v, list) and isinstance(net.config[k], tuple) else v)
               for k, v in config.items() if not k.startswith("_"))


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_the_schedulers_and_pipeline_indexes_are_the_projects(name):
    components = preset_model(name)
    family, prediction_type = SCHEDULES[name]
    config = json.loads((components["scheduler"] / "scheduler_config.json").read_text())
    assert from_scheduler_config(config)[1] == prediction_type
    index = MODEL_CONFIGS[name] / "model_index.json"
    if family is None:  # EDM ImageNet-64: unet/ + scheduler/, the class-conditional pixel teacher's layout
        assert not index.exists() and set(components) == {"unet", "scheduler"}
        assert component_class(name, "unet").__name__ == "UNet2DModel"
        return
    index = json.loads(index.read_text())
    assert family_of_pipeline(index["_class_name"]).name == family
    assert family_of_pipeline(index["_class_name"]).network == component_class(
        name, family_of_pipeline(index["_class_name"]).component).__name__
    # every component that has weights has its config here, under the class the index names
    shipped = {k for k, v in index.items() if isinstance(v, list) and v[0] is not None and not k.startswith("token")
               and k not in ("feature_extractor", "safety_checker")}
    assert shipped == set(components)
    for component in shipped - {"scheduler"}:
        assert component_class(name, component).__name__ == index[component][1]


def test_the_module_imports_only_the_model_libraries():
    tree = ast.parse(Path(model_configs.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"__future__", "json", "pathlib", "torch", "diffusers", "transformers"}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]  # nothing of ours


@pytest.mark.slow
def test_sd15_unet_builds_for_real_at_full_size():
    unet = build("sd15", "unet", device="cpu")  # random init, float32: 3.4 GB
    params = list(unet.parameters())
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)
    assert abs(sum(p.numel() for p in params) - 859.5 * M) <= 0.005 * 859.5 * M
    assert torch.isfinite(unet.conv_in.weight).all() and unet.conv_in.weight.std() > 0
