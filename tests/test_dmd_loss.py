"""DMD2's distribution-matching loss on the exact 2-D teacher, and the GAN head plumbing."""

import pytest
import torch
from diffusers import DDPMScheduler
from toy2d_training import SCHEDULE, train_toy_generator

from stepdistill.heads import GANHead, bottleneck_features
from stepdistill.losses import discriminator_loss, dmd_grad, dmd_loss, generator_gan_loss
from stepdistill.schedules import DiscreteRange
from stepdistill.trio import load_teacher, make_fake_score, make_generator


def test_dmd_gradient_is_the_normalised_score_difference():
    x, x0_real, x0_fake = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    x.requires_grad_(True)
    dmd_loss(x, x0_real, x0_fake).backward()
    norm = (x.detach() - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x.grad, (x0_fake - x0_real) / norm / x.numel())
    assert float(dmd_grad(x.detach(), x0_real, x0_real).abs().max()) == 0  # fake == real: no signal
    assert torch.isfinite(dmd_grad(x0_real, x0_real, x0_fake)).all()  # zero normaliser is not NaN


def test_gan_losses_are_non_saturating():
    assert float(discriminator_loss(torch.full((4,), 20.0), torch.full((4,), -20.0))) < 1e-6
    assert float(discriminator_loss(torch.zeros(4), torch.zeros(4))) == pytest.approx(2 * 0.6931, abs=1e-3)
    logits = torch.full((4,), -10.0, requires_grad=True)  # D is sure the sample is fake
    generator_gan_loss(logits).backward()
    assert float(logits.grad.abs().min()) > 0.2 / 4  # the gradient does not vanish


def test_dmd_drives_a_generator_to_the_target_mixture():
    """Two time-scale DMD on toy2d with the exact real score: the generator's samples reach the
    8-mode mixture. Threshold: sliced Wasserstein 0.1, where the untrained generator scores ~0.6
    and two independent 2,000-sample draws of the target ~0.015; every mode gets >= 6% of samples."""
    dmd_times = DiscreteRange(0.02, 0.98)

    def generator_loss(x, real, fake):
        t = dmd_times.sample(SCHEDULE, x.shape[0])
        x_t = SCHEDULE.add_noise(x.detach(), torch.randn_like(x), t)
        with torch.no_grad():
            x0_real, x0_fake = real(x_t, t), fake(x_t, t)
        return dmd_loss(x, x0_real, x0_fake)

    result = train_toy_generator(generator_loss, steps=2500, ratio=5)
    assert result.start > 0.4 and result.end < 0.1, (result.start, result.end)
    assert float(result.modes.min()) > 0.06, result.modes


@pytest.fixture
def tiny_teacher(tmp_path, tiny_unet):
    tiny_unet.save_pretrained(tmp_path / "t" / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").save_pretrained(tmp_path / "t" / "scheduler")
    return load_teacher(tmp_path / "t")


def test_gan_head_sees_the_fake_score_bottleneck(tiny_teacher):
    fake = make_fake_score(tiny_teacher)
    cond = dict(class_labels=torch.tensor([0, 1]))
    x = torch.randn(2, 1, 8, 8)
    captured = []
    handle = fake.net.mid_block.register_forward_hook(lambda m, i, o: captured.append(o))
    feats = bottleneck_features(fake, x, torch.tensor([10.0, 500.0]), **cond)
    handle.remove()
    torch.testing.assert_close(feats, captured[0])  # exactly the mid block's output
    assert feats.shape == (2, 16, 4, 4)
    head = GANHead.for_denoiser(fake, x, 500.0, **cond)
    logits = head(bottleneck_features(fake, x, 500.0, **cond))
    assert logits.shape == (2,)
    logits.sum().backward()
    # Discriminator gradients reach the fake score's encoder, not its decoder (never run).
    assert fake.net.down_blocks[0].resnets[0].conv1.weight.grad is not None
    assert fake.net.up_blocks[-1].resnets[0].conv1.weight.grad is None
    # The generator's gradient reaches its samples through the frozen discriminator.
    gen = make_generator(tiny_teacher)
    sample = gen(torch.randn(2, 1, 8, 8), **cond)
    generator_gan_loss(head(bottleneck_features(fake, sample, 500.0, **cond))).backward()
    assert gen.net.conv_out.weight.grad is not None and gen.net.conv_out.weight.grad.abs().sum() > 0
