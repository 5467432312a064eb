"""Every registered recipe's YAML presets: each parses into its recipe's config, and the default preset
(`digits.yaml`, or `sr_x4.yaml` for the super-resolution recipes: the embedded default, written out) is exactly
the recipe's defaults, so running with and without it is the same run."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
from registry import RECIPES  # noqa: E402
from stepdistill.config import load_config, to_dict  # noqa: E402

CONFIGS = {name: info.config_class() for name, info in RECIPES.items()}
PRESETS = sorted(p for r in CONFIGS for p in (ROOT / "recipes" / "configs" / r).glob("*.yaml"))


def test_every_recipe_has_presets_and_a_default_one():
    assert {p.parent.name for p in PRESETS} == set(CONFIGS)
    assert all(info.preset(info.default_preset).is_file() for info in RECIPES.values())
    # every preset folder is a registered recipe's (or an asset trainer's)
    folders = {p.name for p in (ROOT / "recipes" / "configs").iterdir() if p.is_dir()}
    assert folders - set(RECIPES) == {"train_teacher"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_parses_into_its_recipe_config(preset):
    config = CONFIGS[preset.parent.name]
    cfg = load_config(config, ["--config", str(preset)])
    assert cfg.model.teacher and cfg.train.batch_size > 0
    if preset.stem == RECIPES[preset.parent.name].default_preset:
        assert to_dict(cfg) == to_dict(config()), f"{preset.name} must equal the recipe's defaults"
    elif preset.stem.startswith("digits"):  # a digits variant: the shipped teacher
        assert cfg.model.teacher == "digits"
    else:  # real-model presets name a hub teacher; smoke presets the tiny text-to-image pipeline
        assert cfg.model.teacher.startswith("tiny-") if "tiny" in preset.stem else "/" in cfg.model.teacher


@pytest.mark.parametrize("preset", [p for p in PRESETS if "/" in load_config(CONFIGS[p.parent.name],
                                                                              ["--config", str(p)]).model.teacher],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_real_model_preset_trains_without_a_time_limit(preset):
    """The embedded benchmarks' 11.5-minute CPU budget is the recipes' default; a real-model preset must not
    inherit it (it would stop a GPU job, and end its learning-rate decay, after 11.5 minutes)."""
    cfg = load_config(CONFIGS[preset.parent.name], ["--config", str(preset)])
    assert cfg.train.time_limit_minutes is None


def test_the_library_default_is_no_time_limit():
    from stepdistill.training import EMBEDDED_MINUTES, TrainConfig

    assert TrainConfig().time_limit_minutes is None
    assert all(c().train.time_limit_minutes == EMBEDDED_MINUTES for c in CONFIGS.values())  # the embedded defaults
