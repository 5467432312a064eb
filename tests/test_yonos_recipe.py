"""YONOS-SR's scale distillation on tiny SR teachers: the student (x4) regresses the x2 teacher's prediction for
the same noised image, each given its own scale's LR image; starts as the teacher; exports a x4 pipeline."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
import yonos  # noqa: E402
from stepdistill import losses  # noqa: E402
from stepdistill.denoiser import native_loss_weight  # noqa: E402
from stepdistill.time_sampling import fake_score_times  # noqa: E402
from stepdistill.training import Draw  # noqa: E402


@pytest.fixture(scope="module")
def x2_teacher(tmp_path_factory):
    from stepdistill.tiny import build_tiny_super_resolution

    return build_tiny_super_resolution(tmp_path_factory.mktemp("teacher") / "tiny-sr-x2", scale=2, residual=True)


def _cfg(teacher, out, *extra):
    return quick.config("yonos", teacher, out, "data.patches=32", *extra)


def test_the_x4_student_regresses_the_x2_teachers_prediction_at_the_same_noisy_image(x2_teacher, tmp_path):
    run = yonos.setup(_cfg(x2_teacher, tmp_path))
    s = run.setup
    assert s.conditioner.scale == 2 and run.condition.scale == 4
    # replay the step's draws: real images, levels, noise
    draw = Draw(s.accelerator, 4, 0, 0)
    real, labels = draw.real(s.real.over(s.dataset))
    t = draw.times(fake_score_times("teacher"), s.schedule)
    x_t = s.schedule.add_noise(real, draw.randn(*s.shape), t)
    hard, easy = run.condition.cond(labels)["concat"], s.conditioner.cond(labels)["concat"]
    assert run.condition.lr(labels).shape[-1] == 4 and s.conditioner.lr(labels).shape[-1] == 8
    assert float((hard - easy).abs().mean()) > 1e-3  # the student sees the harder input
    with torch.no_grad():
        target = run.teacher(x_t, t, concat=easy)
        mine = run.student(x_t, t, concat=hard)
        torch.testing.assert_close(run.student(x_t, t, concat=easy), target)  # it starts as the teacher
    weight = native_loss_weight(s.teacher.prediction_type, s.schedule.alpha(t), s.schedule.sigma(t))
    expected = losses.denoising_loss(mine, target, weight)
    logs = yonos.step(run, Draw(s.accelerator, 4, 0, 0), 0)
    assert logs["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_a_run_exports_a_one_step_x4_pipeline(x2_teacher, tmp_path):
    out = tmp_path / "run"
    yonos.main(_cfg(x2_teacher, out, "train.max_steps=2", "train.checkpoint_every=2"))
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["sr_scale"] == 4 and index["timesteps"] == [999]
    from stepdistill.teachers import load_teacher

    assert load_teacher(out / "pipeline").index["sr_scale"] == 4  # the next iteration's teacher


@pytest.mark.parametrize(("override", "match"), [("model.student_scale=2", "student_scale"),
                                                 ("model.student_scale=3", "student_scale")])
def test_bad_yonos_input_fails_before_any_step(x2_teacher, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        yonos.main(_cfg(x2_teacher, tmp_path / "x", override))
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_teacher_that_is_not_super_resolution_is_refused(digits_like_teacher, tmp_path):
    with pytest.raises(ValueError, match="super-resolution teacher"):
        yonos.main(_cfg(digits_like_teacher, tmp_path / "x"))
