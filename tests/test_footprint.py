"""The setup report of each run's memory: roles' parameter counts, and the per-process parameter, gradient,
optimiser, EMA and activation memory, counted from the networks themselves (a LoRA fake score on the teacher's network
counted once; activations measured on meta for the recipe's declared passes, `tests/test_plan.py`)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
import consistency_distill as cd  # noqa: E402
import swiftbrush  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402
from stepdistill.training.footprint import footprint, format_footprint  # noqa: E402

COMMON = list(quick.OVERRIDES)
MIB = 2 ** 20


def _numel(module, trainable=None):
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


def test_roles_optimiser_states_and_ema_are_counted_from_the_networks(digits_like_teacher, tmp_path):
    run = cd.setup(apply_overrides(cd.ConsistencyDistillConfig(), [f"model.teacher={digits_like_teacher}",
                                                                   f"train.output_dir={tmp_path}", *COMMON]))
    report = footprint(run)
    rows = {r["role"]: r for r in report["roles"]}
    assert list(rows) == ["teacher", "generator", "target"]
    teacher = run.setup.teacher.net
    student = run.setup.unwrap(run.generator)
    assert rows["teacher"]["params"] == _numel(teacher) and rows["teacher"]["trainable"] == 0
    assert rows["generator"]["trainable"] == _numel(student, True) > 0
    assert rows["target"]["trainable"] == 0
    n = _numel(teacher)  # three copies of one architecture, float32
    assert report["mib"]["parameters"] * MIB == 3 * 4 * n
    assert report["mib"]["gradients"] * MIB == 4 * n  # the student's, float32
    assert report["mib"]["optimizer_states"] * MIB == 2 * 4 * n  # Adam: two moments per trainable weight
    assert report["mib"]["ema"] * MIB == 4 * n
    act = report["activations"]
    assert act["peak_update"] == "generator" and act["micro_batch"] == 4 and report["mib"]["activations"] > 0
    assert report["mib"]["total"] == pytest.approx(sum(v for k, v in report["mib"].items() if k != "total"))
    text = format_footprint(report)
    assert f"{n:,}" in text and "gradients" in text and "micro-batch 4, peak in the generator update" in text


def test_activations_scale_with_the_micro_batch_and_fall_with_checkpointing(digits_like_teacher, tmp_path):
    def activations(*extra):
        run = cd.setup(apply_overrides(cd.ConsistencyDistillConfig(), [
            f"model.teacher={digits_like_teacher}", f"train.output_dir={tmp_path / str(len(extra))}", *COMMON, *extra]))
        return footprint(run)["mib"]["activations"]

    four, eight = activations(), activations("train.batch_size=8")
    assert eight == pytest.approx(2 * four, rel=0.1)
    assert activations("train.batch_size=8", "model.gradient_checkpointing=true") < 0.8 * eight


def test_a_recipe_without_declared_roles_reports_no_activations(digits_like_teacher, tmp_path, monkeypatch):
    """The estimate is printed, never fatal: a recipe that declares no `plan_roles` trains, its footprint says why."""
    monkeypatch.delattr(cd, "plan_roles")
    run = cd.setup(apply_overrides(cd.ConsistencyDistillConfig(), [f"model.teacher={digits_like_teacher}",
                                                                   f"train.output_dir={tmp_path}", *COMMON]))
    report = footprint(run)
    assert report["mib"]["activations"] is None and "plan_roles" in report["activations"]["reason"]
    assert "activations not estimated (the recipe declares no plan_roles)" in format_footprint(report)


def test_a_lora_fake_score_on_the_teacher_is_counted_once(digits_like_teacher, tmp_path):
    run = swiftbrush.setup(apply_overrides(swiftbrush.SwiftBrushConfig(), [
        f"model.teacher={digits_like_teacher}", f"train.output_dir={tmp_path}", *COMMON]))
    report = footprint(run)
    rows = {r["role"]: r for r in report["roles"]}
    teacher = run.setup.teacher.net
    assert rows["teacher"]["trainable"] == _numel(teacher, True) > 0  # the LoRA, on the teacher's network
    assert "real_score" not in rows  # the same network, adapters off: not listed again
    unique = {id(p): p for m in (teacher, run.setup.unwrap(run.generator)) for p in m.parameters()}
    assert report["mib"]["parameters"] * MIB == sum(p.numel() * p.element_size() for p in unique.values())


def test_a_text_to_image_run_counts_its_text_encoders_and_vae(tmp_path, monkeypatch):
    """SDXL: both CLIP encoders in one frozen row, the VAE in another, both in the per-process parameters."""
    import dmd2

    from stepdistill.config import load_config

    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    run = dmd2.setup(load_config(dmd2.DMD2Config, ["--config", "recipes/configs/dmd2/tiny_sdxl.yaml",
                                                   f"train.output_dir={tmp_path / 'run'}"]))
    rows = {r["role"]: r for r in footprint(run)["roles"]}
    pipe = run.setup.conditioner.encoder.pipe
    texts = _numel(pipe.text_encoder) + _numel(pipe.text_encoder_2)
    assert rows["text_encoders"]["params"] == texts and rows["text_encoders"]["trainable"] == 0
    assert rows["vae"]["params"] == _numel(run.setup.space.vae) and rows["vae"]["trainable"] == 0
    three = 3 * _numel(run.setup.teacher.net)  # teacher, fake score, generator
    assert footprint(run)["mib"]["parameters"] * MIB == 4 * (three + texts + _numel(run.setup.space.vae))
