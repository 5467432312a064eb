"""The digits teacher recipe: a few steps on the split asked for, saved as a loadable diffusers folder."""

import json
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
import train_teacher  # noqa: E402
from stepdistill.config import ConfigError, apply_overrides  # noqa: E402
from stepdistill.data import DigitsDataset  # noqa: E402


def test_control_teacher_trains_on_the_heldout_split_only(tmp_path, monkeypatch):
    seen = []

    def spy(resolution, split):
        seen.append(split)
        return DigitsDataset(resolution, split=split)

    monkeypatch.setattr(train_teacher, "DigitsDataset", spy)
    out = tmp_path / "teacher"
    cfg = apply_overrides(train_teacher.TeacherConfig(), [
        "split=heldout", f"output_dir={out}", "train.max_steps=2", "train.batch_size=8", "train.warmup_steps=0",
        "model.block_out_channels=[32,32,32]"])
    train_teacher.main(cfg)
    assert seen == ["heldout"]
    summary = json.loads((out / "training.json").read_text())
    assert summary["config"]["split"] == "heldout"
    unet = UNet2DModel.from_pretrained(out / "unet")
    x = torch.zeros(2, 1, 16, 16)
    assert unet(x, torch.tensor([10, 10]), class_labels=torch.tensor([0, 10])).sample.shape == x.shape


def test_unknown_split_is_refused_before_training():
    with pytest.raises(ConfigError, match="split"):
        apply_overrides(train_teacher.TeacherConfig(), ["split=test"])
