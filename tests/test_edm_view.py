"""`EDMView`: a VP teacher in EDM's parameterisation answers EDM's questions exactly as the VP teacher does,
and the recipes run on it (`model.teacher=digits-edm`)."""


import pytest
import torch

from stepdistill.edm_view import as_edm
from stepdistill.teachers import load_teacher
from stepdistill.schedules import EDM
from stepdistill.time_sampling import TeacherLevels



def test_the_edm_view_predicts_what_the_vp_teacher_predicts(digits_like_teacher):
    vp_teacher, edm_teacher = load_teacher(digits_like_teacher), as_edm(load_teacher(digits_like_teacher))
    vp, edm = vp_teacher.schedule, edm_teacher.schedule
    assert isinstance(edm, EDM) and edm_teacher.prediction_type == "edm"
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 1, 16, 16, generator=g), torch.randn(3, 1, 16, 16, generator=g)
    t = torch.tensor([40.0, 500.0, 960.5])  # fractional times too: the teacher was trained on them
    labels = torch.tensor([1, 4, 10])
    x_t = vp.add_noise(x0, eps, t)
    s = vp.ratio(t)
    want = vp_teacher.denoiser()(x_t, t, class_labels=labels)
    got = edm_teacher.denoiser()(x_t / vp.alpha(t).view(-1, 1, 1, 1), s, class_labels=labels)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert edm.sigma_min >= float(vp.ratio(torch.tensor(0.0))) and edm.sigma_max == 80.0
    # the fake score's default levels on it: the Karras table, 40% of it below sigma 1
    levels = TeacherLevels().sample(edm, 20000, generator=g)
    assert 0.3 < float((levels < 1).float().mean()) < 0.45


def test_dmd2_trains_on_the_shipped_teacher_as_an_edm_teacher(tmp_path):
    import dmd2
    from stepdistill.config import apply_overrides
    from stepdistill.training import Draw

    cfg = apply_overrides(dmd2.DMD2Config(), [
        "model.teacher=digits-edm", "model.generator_timesteps=[80.0]", f"train.output_dir={tmp_path}",
        "train.batch_size=4", "optim.warmup_steps=0", "optim.update_ratio=1"])
    run = dmd2.setup(cfg)
    assert isinstance(run.setup.schedule, EDM) and run.generator.input_scale == pytest.approx(80.0)
    logs = dmd2.step(run, Draw(run.setup.accelerator, 4, 0, 0), 0)
    assert all(torch.isfinite(torch.tensor(v)) for v in logs.values()) and {"loss_fake", "loss_dm"} <= set(logs)
