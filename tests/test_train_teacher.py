"""The digits teacher recipe: a few steps on the split asked for, saved as a loadable diffusers folder."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parent.parent
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


def test_the_sr_teacher_trains_on_patches_and_loads_as_an_lr_conditioned_teacher(tmp_path):
    """data=patches: a 6-in / 3-out network on natural-image patches; its folder records the scale, from which
    the recipes rebuild the low-resolution condition (natural-image patches as its real images)."""
    from stepdistill.conditioning import LRConditioner
    from stepdistill.teachers import load_teacher
    from stepdistill.training import DataConfig, setup_data

    out = tmp_path / "sr"
    from stepdistill.config import load_config

    cfg = load_config(train_teacher.TeacherConfig, [
        "--config", str(ROOT / "recipes/configs/train_teacher/sr_x4.yaml"), f"output_dir={out}",
        "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=0", "patches=16"])
    train_teacher.main(cfg)
    teacher = load_teacher(out)
    assert teacher.net.config.in_channels == 6 and teacher.net.config.out_channels == 3
    assert teacher.index["sr_scale"] == 4
    conditioner, _, dataset = setup_data(DataConfig(), teacher, "cpu", need_images=False)
    assert isinstance(conditioner, LRConditioner) and conditioner.scale == 4 and dataset[0]["images"].shape == (3, 32, 32)
    x0 = teacher.denoiser()(torch.zeros(2, 3, 32, 32), 500.0, **conditioner.cond(torch.tensor([0, 1])))
    assert x0.shape == (2, 3, 32, 32) and torch.isfinite(x0).all()
