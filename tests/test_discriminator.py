"""DMD2's discriminator: a head on the fake score's bottleneck (`Denoiser.features`)."""

import pytest
import torch
from diffusers import DDPMScheduler

from stepdistill.discriminator import GANHead
from stepdistill.losses import generator_gan_loss
from stepdistill.roles import make_fake_score, make_generator
from stepdistill.teachers import load_teacher


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
    feats = fake.features(x, torch.tensor([10.0, 500.0]), **cond)
    handle.remove()
    torch.testing.assert_close(feats, captured[0])  # exactly the mid block's output
    assert feats.shape == (2, 16, 4, 4)
    head = GANHead.for_denoiser(fake, x, 500.0, **cond)
    logits = head(fake.features(x, 500.0, **cond))
    assert logits.shape == (2,)
    logits.sum().backward()
    # Discriminator gradients reach the fake score's encoder, not its decoder (never run).
    assert fake.net.down_blocks[0].resnets[0].conv1.weight.grad is not None
    assert fake.net.up_blocks[-1].resnets[0].conv1.weight.grad is None
    # The generator's gradient reaches its samples through the frozen discriminator.
    gen = make_generator(tiny_teacher)
    sample = gen(torch.randn(2, 1, 8, 8), **cond)
    generator_gan_loss(head(fake.features(sample, 500.0, **cond))).backward()
    assert gen.net.conv_out.weight.grad is not None and gen.net.conv_out.weight.grad.abs().sum() > 0
