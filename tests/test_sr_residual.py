"""Super-resolution networks that model the residual over the bicubic upsample (`Denoiser(residual=True)`, the
shipped SR teachers): still a denoiser of x0, read from a teacher folder's `sr_residual`, carried by the export,
and sampled by the exported pipeline as stepdistill samples it, for one step and for several."""

import json

import pytest
import torch
from without_stepdistill import SEEDED, images_without_stepdistill

from stepdistill.conditioning import LRConditioner
from stepdistill.degradations import Degradation
from stepdistill.denoiser import Denoiser
from stepdistill.teachers import load_teacher
from stepdistill.samplers import multistep
from stepdistill.tiny import build_tiny_super_resolution


class Zero(torch.nn.Module):
    """A network whose every prediction is zero: an untrained residual model's ideal starting point."""

    def forward(self, x, timestep, **kwargs):
        return (torch.zeros_like(x[:, :3]),)


def _teacher(tmp_path, residual=True):
    return load_teacher(build_tiny_super_resolution(tmp_path / "sr", residual=residual))


def test_a_residual_denoiser_is_the_plain_one_on_the_noised_residual_plus_the_condition(tmp_path):
    teacher = _teacher(tmp_path)
    plain = Denoiser(teacher.net, teacher.schedule, teacher.prediction_type)
    residual = teacher.denoiser()
    assert residual.residual and not plain.residual
    g = torch.Generator().manual_seed(0)
    x_t, y = torch.randn(3, 3, 16, 16, generator=g), torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    t = torch.tensor([999.0, 500.0, 20.0])
    alpha = teacher.schedule.alpha(t).view(-1, 1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(residual(x_t, t, concat=y), y + plain(x_t - alpha * y, t, concat=y))
        # the bottleneck the discriminators read sees the same shifted input
        torch.testing.assert_close(residual.features(x_t, t, concat=y), plain.features(x_t - alpha * y, t, concat=y))


def test_a_residual_network_that_predicts_nothing_returns_the_upsample_from_pure_noise(tmp_path):
    """x0 = y + alpha (x_t - alpha y) - sigma 0: at t = 999 (alpha ~ 0.006) the bicubic upsample, not noise."""
    teacher = _teacher(tmp_path)
    den = Denoiser(Zero(), teacher.schedule, "v_prediction", residual=True)
    y = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x0 = den(float(teacher.schedule.sigma(torch.tensor(999.0))) * z, 999.0, concat=y)
    assert float((x0 - y).abs().max()) < 0.05
    plain = Denoiser(Zero(), teacher.schedule, "v_prediction")(z, 999.0, concat=y)
    assert float((plain - y).abs().mean()) > 0.3


def test_a_residual_denoiser_without_its_image_condition_is_an_error(tmp_path):
    import pytest

    den = _teacher(tmp_path).denoiser()
    with pytest.raises(ValueError, match="image condition"):
        den(torch.zeros(1, 3, 16, 16), 500.0)


@pytest.mark.slow
def test_the_exported_residual_pipeline_samples_two_steps_as_stepdistill_does(tmp_path):
    """Two steps with re-noising in between, from t = 749 (where alpha y is far from negligible): the pipeline, in a process without stepdistill, runs its loop on the
    noised residual and gives stepdistill's multistep images from the same seed; the folder records sr_residual and
    loads back as a residual teacher (YONOS-SR's iteration)."""
    from stepdistill.export import export_super_resolution

    teacher = _teacher(tmp_path)
    folder = export_super_resolution(tmp_path / "pipe", teacher.net, teacher.scheduler_config, timesteps=[749, 249],
                                     sr_scale=4, residual=True)
    assert json.loads((folder / "model_index.json").read_text())["sr_residual"] is True
    assert load_teacher(folder).denoiser().residual
    low = "torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))"
    images = images_without_stepdistill(folder, tmp_path, f"image={low}, {SEEDED}")

    conditioner = LRConditioner([], Degradation(4), channels=3)
    lr = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    cond = conditioner.condition(lr)
    den = teacher.denoiser()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 16, 16, generator=g)
    sigma = float(teacher.schedule.sigma(torch.tensor(749.0)))
    with torch.no_grad():
        expected = multistep(lambda x, t: den(x, t, **cond), teacher.schedule, sigma * z,
                             torch.tensor([749.0, 249.0]), generator=g)
    torch.testing.assert_close(images, expected.clamp(-1, 1) * 0.5 + 0.5, atol=1e-4, rtol=0)
