"""Every recipe's YAML presets: each parses into its recipe's config, and each `digits.yaml` (the embedded
default, written out) is exactly the recipe's defaults, so running with and without it is the same run."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
import consistency_distill  # noqa: E402
import dmd2  # noqa: E402
import ect  # noqa: E402
import sid  # noqa: E402
import sim  # noqa: E402
import msd  # noqa: E402
import swiftbrush  # noqa: E402
from stepdistill.config import load_config, to_dict  # noqa: E402

CONFIGS = {"dmd2": dmd2.DMD2Config, "sid": sid.SiDConfig, "sim": sim.SIMConfig, "swiftbrush": swiftbrush.SwiftBrushConfig,
           "consistency_distill": consistency_distill.ConsistencyDistillConfig, "ect": ect.ECTConfig,
           "msd": msd.MSDConfig}
PRESETS = sorted(p for r in CONFIGS for p in (ROOT / "recipes" / "configs" / r).glob("*.yaml"))


def test_every_recipe_has_presets_and_a_digits_default():
    assert {p.parent.name for p in PRESETS} == set(CONFIGS)
    assert all((ROOT / "recipes" / "configs" / r / "digits.yaml").is_file() for r in CONFIGS)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_preset_parses_into_its_recipe_config(preset):
    config = CONFIGS[preset.parent.name]
    cfg = load_config(config, ["--config", str(preset)])
    assert cfg.model.teacher and cfg.train.batch_size > 0
    if preset.stem == "digits":
        assert to_dict(cfg) == to_dict(config()), "digits.yaml must equal the recipe's defaults"
    elif preset.stem.startswith("digits"):  # a digits variant: the shipped teacher
        assert cfg.model.teacher == "digits"
    else:  # real-model presets name a hub teacher; smoke presets the tiny text-to-image pipeline
        assert cfg.model.teacher.startswith("tiny-") if "tiny" in preset.stem else "/" in cfg.model.teacher
