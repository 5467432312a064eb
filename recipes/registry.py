"""Every distillation recipe, once: its module, config class, presets and default teacher.

Tests (`tests/recipes/test_contract.py`), the tools, the experiments and the docs iterate `RECIPES`; a recipe added
here gets the contract suite (bad input, resume, one process against two, the export without stepdistill, the model
card's code, every preset) without writing a test. The asset trainers (`train_teacher.py`, `train_classifier.py`) make
teachers and feature networks, not students, and are not listed.

    from registry import RECIPES            # with recipes/ on sys.path (pytest's pythonpath does this)
    cfg = RECIPES["dmd2"].config_class()()
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class RecipeInfo:
    name: str  # module in recipes/ and the NAME it logs
    config: str  # its typed config class
    title: str  # as tables print it
    teacher: str  # the embedded default's teacher (the config's default `model.teacher`)
    default_preset: str  # the preset that is the recipe's defaults written out
    tiny_teacher: str = "digits"  # the tiny random teacher tests run it on: "digits", "sr" (x4) or "sr-x2"
    # "distribution" (a fake score), "consistency", "bootstrapping" (BOOT), "forgetting" (SFD), "multi_student",
    # "super_resolution"
    family: str = "distribution"

    def module(self) -> ModuleType:
        return importlib.import_module(self.name)

    def config_class(self) -> type:
        return getattr(self.module(), self.config)

    def presets(self) -> list[Path]:
        return sorted((CONFIGS / self.name).glob("*.yaml"))

    def preset(self, stem: str) -> Path:
        return CONFIGS / self.name / f"{stem}.yaml"


RECIPES: dict[str, RecipeInfo] = {r.name: r for r in [
    RecipeInfo("dmd2", "DMD2Config", "DMD2", "digits", "digits"),
    RecipeInfo("sid", "SiDConfig", "SiD", "digits", "digits"),
    RecipeInfo("sim", "SIMConfig", "SIM", "digits", "digits"),
    RecipeInfo("swiftbrush", "SwiftBrushConfig", "SwiftBrush", "digits", "digits"),
    RecipeInfo("sfd", "SFDConfig", "SFD", "digits", "digits", family="forgetting"),
    RecipeInfo("consistency_distill", "ConsistencyDistillConfig", "Consistency distillation", "digits", "digits",
               family="consistency"),
    RecipeInfo("ect", "ECTConfig", "ECT", "digits", "digits", family="consistency"),
    RecipeInfo("boot", "BOOTConfig", "BOOT", "digits", "digits", family="bootstrapping"),
    RecipeInfo("msd", "MSDConfig", "MSD", "digits", "digits", family="multi_student"),
    RecipeInfo("tadsr", "TADSRConfig", "TAD-SR", "sr", "sr_x4", tiny_teacher="sr", family="super_resolution"),
    RecipeInfo("yonos", "YONOSConfig", "YONOS-SR", "sr-x2", "sr_x4", tiny_teacher="sr-x2",
               family="super_resolution"),
]}
