"""TAD-SR on a tiny super-resolution teacher: the student starts as the teacher's one-step output, the HSD
loss against the official formula and its direction on a Gaussian teacher, the wiring of each term (targets from
the same noise, shared HSD noise, the discriminator told its level), resume, bad input."""

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
import tadsr  # noqa: E402
from stepdistill import losses  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402
from stepdistill.training import Draw  # noqa: E402
from without_stepdistill import SEEDED, images_without_stepdistill  # noqa: E402


def _overrides(teacher, out, *extra):
    return quick.overrides(teacher, out, "data.patches=32", "loss.regression_pairs=8", "loss.regression_nfe=4", *extra)


def _cfg(*overrides):
    return apply_overrides(tadsr.TADSRConfig(), list(overrides))


def test_hsd_loss_is_the_official_formula_on_random_tensors():
    """Official: grad = eps(x_stu_t) - eps(x_tch_t) (no gradient); loss = mean(grad * x0_stu)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g, requires_grad=True)
    eps_s, eps_t = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    loss = losses.hsd_loss(x, eps_s, eps_t)
    torch.testing.assert_close(loss, ((eps_s - eps_t) * x).mean())
    loss.backward()
    torch.testing.assert_close(x.grad, (eps_s - eps_t) / x.numel())


class GaussianTeacher(torch.nn.Module):
    """The exact denoiser of data N(mu, s^2 I) under a VP schedule: E[x0 | x_t]."""

    def __init__(self, schedule, mu=0.3, s=0.5):
        super().__init__()
        self.schedule, self.mu, self.s = schedule, mu, s

    def forward(self, x_t, t, **cond):
        a, sig = self.schedule.alpha(t).view(-1, 1, 1, 1), self.schedule.sigma(t).view(-1, 1, 1, 1)
        k = a * self.s**2 / (a**2 * self.s**2 + sig**2)
        return self.mu + k * (x_t - a * self.mu)


def test_the_recipes_hsd_gradient_moves_the_student_towards_the_teachers_output(sr_teacher, tmp_path):
    """With an exact Gaussian teacher, eps(x_t) - eps(x_T,t) = (alpha / sigma) (1 - k alpha) (x - x_T) when both
    images carry the same noise: descending the recipe's HSD loss moves x straight towards x_T."""
    run = tadsr.setup(_cfg(*_overrides(sr_teacher, tmp_path)))
    run.teacher = GaussianTeacher(run.setup.schedule)
    g = torch.Generator().manual_seed(1)
    x_teacher = torch.randn(4, 3, 16, 16, generator=g)
    x = (x_teacher + 0.3 * torch.randn(4, 3, 16, 16, generator=g)).requires_grad_(True)
    eps_s, eps_t = tadsr.hsd_grads(run, Draw(run.setup.accelerator, 4, 0, 0), x, x_teacher, {})
    losses.hsd_loss(x, eps_s, eps_t).backward()
    cos = torch.nn.functional.cosine_similarity(x.grad.flatten(1), (x - x_teacher).detach().flatten(1))
    assert bool((cos > 0.999).all())  # the gradient points from x_T to x: descent goes to x_T


def test_the_student_starts_as_the_teachers_one_step_output(sr_teacher, tmp_path):
    run = tadsr.setup(_cfg(*_overrides(sr_teacher, tmp_path)))
    s = run.setup
    z = torch.randn(2, *s.shape, generator=torch.Generator().manual_seed(0))
    cond = s.conditioner.cond(torch.tensor([3, 5]))
    with torch.no_grad():
        sigma = float(s.schedule.sigma(torch.tensor(999.0)))
        torch.testing.assert_close(run.generator(z, **cond), run.teacher(sigma * z, 999.0, **cond))


def test_the_regression_target_is_the_teachers_output_for_the_students_noise_and_image(sr_teacher, tmp_path):
    """The logged regression loss at step 0 is the MSE between G(z_i, y_i) and the teacher's multistep output
    for pair i, solved from the same z_i and y_i."""
    from stepdistill.samplers import sample

    run = tadsr.setup(_cfg(*_overrides(sr_teacher, tmp_path, "loss.hsd_weight=0", "loss.gan_weight=0")))
    s, pairs = run.setup, run.pairs
    den = lambda x, t: run.teacher(x, t, **s.conditioner.cond(pairs.labels[:2]))  # noqa: E731
    solved = sample(den, s.schedule, pairs.z[:2] * s.schedule.prior_std(), sampler="dpmpp_2m", steps=4)
    torch.testing.assert_close(solved, pairs.x[:2], atol=1e-5, rtol=0)
    i = Draw(s.accelerator, 4, run.cfg.train.seed, 0).index(len(pairs))
    with torch.no_grad():
        x = run.generator(pairs.z[i], **s.conditioner.cond(pairs.labels[i]))
    expected = torch.nn.functional.mse_loss(x, pairs.x[i])
    logs = tadsr.step(run, Draw(s.accelerator, 4, run.cfg.train.seed, 0), 0)
    assert logs["loss_reg"] == pytest.approx(float(expected), rel=1e-5)


def test_the_discriminator_is_told_the_level_it_judges_and_sees_each_images_own_lr(sr_teacher, tmp_path):
    run = tadsr.setup(_cfg(*_overrides(sr_teacher, tmp_path, "loss.hsd_weight=0")))
    s, seen = run.setup, {"features": [], "head": []}
    features, head_forward = run.teacher.features, s.unwrap(run.head).forward

    def spy_features(x_t, t, **cond):
        seen["features"].append((t.clone(), cond["concat"].clone()))
        return features(x_t, t, **cond)

    run.teacher.features = spy_features
    s.unwrap(run.head).forward = lambda f, frac: seen["head"].append(frac.clone()) or head_forward(f, frac)
    draw = Draw(s.accelerator, 4, 0, 0)
    real_draw, drawn = draw.real, []
    draw.real = lambda dataset: drawn.append(real_draw(dataset)) or drawn[-1]
    tadsr.step(run, draw, 0)
    schedule = s.schedule
    assert len(seen["head"]) == 2  # the generator's GAN term, then the discriminator's step
    for (t, _), frac in zip(seen["features"], seen["head"]):
        torch.testing.assert_close(frac, (t - schedule.t_min) / (schedule.t_max - schedule.t_min))
        assert float(frac.max()) <= run.cfg.loss.gan_max_t + 1e-6
    # the discriminator's real half: the real patches, each with its own LR image as the condition
    (real, labels), = drawn
    assert torch.equal(real, torch.stack([s.dataset[int(i)]["images"] for i in labels]))
    torch.testing.assert_close(seen["features"][1][1][:4], s.conditioner.cond(labels)["concat"])
    # and the head's output depends on the level it is told
    probe = features(torch.zeros(1, *s.shape), 500.0, **s.conditioner.cond(torch.tensor([0])))
    f = torch.randn(2, *probe.shape[1:])
    with torch.no_grad():
        assert not torch.allclose(head_forward(f, torch.tensor([0.1, 0.1])), head_forward(f, torch.tensor([0.8, 0.8])))


@pytest.mark.parametrize(("override", "match"), [
    ("loss.hsd_max_t=0", "hsd_max_t"), ("loss.gan_weight=-1", "gan_weight"), ("loss.regression_pairs=0", "regression_pairs")])
def test_bad_tadsr_input_fails_before_any_step(sr_teacher, tmp_path, override, match):
    with pytest.raises(ValueError, match=match):
        tadsr.main(_cfg(*_overrides(sr_teacher, tmp_path / "x", override)))
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_teacher_that_is_not_super_resolution_is_refused(digits_like_teacher, tmp_path):
    with pytest.raises(ValueError, match="super-resolution teacher"):
        tadsr.main(_cfg(*_overrides(digits_like_teacher, tmp_path / "x")))


@pytest.mark.slow
def test_the_exported_sr_pipeline_reproduces_the_student_without_stepdistill(sr_teacher, tmp_path):
    """Two steps, then the export: stock diffusers in a process without stepdistill turns a low-resolution image
    into the student's image for the same seed (its EMA weights, as checkpointed)."""
    import json

    from safetensors.torch import load_file

    out = tmp_path / "run"
    tadsr.main(_cfg(*_overrides(sr_teacher, out, "train.max_steps=2", "train.checkpoint_every=2",
                                "optim.lr_generator=1e-3")))
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["sr_scale"] == 4 and index["timesteps"] == [999]
    low = "torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))"
    images = images_without_stepdistill(out / "pipeline", tmp_path, f"image={low}, {SEEDED}")
    assert images.shape == (2, 3, 16, 16)
    run = tadsr.setup(_cfg(*_overrides(sr_teacher, tmp_path / "fresh")))
    student = tadsr.students(run)[0]
    student.load_state_dict(load_file(str(sorted((out / "checkpoints").glob("step_*"))[-1] / "student.safetensors")))
    gen = student.generator
    lr = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = gen(z, **run.setup.conditioner.condition(lr)).clamp(-1, 1) * 0.5 + 0.5
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    with torch.no_grad():  # the export is the trained student, not the teacher
        sigma = float(run.setup.schedule.sigma(torch.tensor(999.0)))
        untrained = run.teacher(sigma * z, 999.0, **run.setup.conditioner.condition(lr)).clamp(-1, 1) * 0.5 + 0.5
    assert float((untrained - expected).abs().max()) > 1e-3


def test_a_run_measures_bicubic_the_teacher_and_the_student_on_held_out_patches(sr_teacher, tmp_path):
    import json

    out = tmp_path / "run"
    tadsr.main(_cfg(*_overrides(sr_teacher, out, "train.max_steps=1", "eval.enabled=true", "eval.teacher_nfe=4")))
    result = json.loads((out / "results.json").read_text())
    assert result["benchmark"] == "sr_patches" and result["n_patches"] == 256 and result["crop_border"] == 4
    assert [(r["model"], r["nfe"]) for r in result["rows"]] == [("bicubic", 0), ("teacher", 4), ("teacher", 1),
                                                                 ("tadsr", 1)]
    assert all(r["psnr_y"] > 5 and 0 < r["seconds_per_image"] for r in result["rows"][1:])
    assert "speedup" in result["student_vs_teacher"] and (out / "results.png").is_file()
    card = (out / "pipeline" / "README.md").read_text()  # the export's card carries the student's own row
    mine = result["rows"][-1]
    assert f"| psnr_y | {mine['psnr_y']:.4g} |" in card and f"| hf_spectrum_error | {mine['hf_spectrum_error']:.4g} |" in card
    assert "PSNR-Y" in card and "| bicubic |" in card
