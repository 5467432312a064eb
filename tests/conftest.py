"""Shared fixtures: tiny random diffusers networks and schedulers, built locally (no network)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state whose precision cannot change once set: start these
    tests from none and leave none behind."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture
def tiny_unet():
    """A class-conditional UNet2DModel on 8x8 single-channel images (label 3 is the null label)."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=8, num_class_embeds=4).eval()


@pytest.fixture
def tiny_cond_unet():
    """A text-conditional UNet2DConditionModel on 4-channel 8x8 latents, 16-d text embeddings."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
                                cross_attention_dim=16, attention_head_dim=4).eval()


@pytest.fixture
def tiny_sd3_transformer():
    """An SD3-style MMDiT (flow matching) on 4-channel 8x8 latents."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                 pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8).eval()


@pytest.fixture(scope="session")
def digits_like_teacher(tmp_path_factory):
    """A tiny digits-shaped teacher folder (16x16, 10 classes + null, cosine VP, v-prediction),
    random weights: what the recipes run on in tests."""
    from stepdistill.tiny import build_tiny_class_conditional

    return build_tiny_class_conditional(tmp_path_factory.mktemp("teacher") / "tiny")


@pytest.fixture(scope="session")
def sr_teacher(tmp_path_factory):
    """A tiny random x4 super-resolution teacher folder (16x16 RGB, LR copy concatenated), modelling the residual
    over the upsample as the shipped one does."""
    from stepdistill.tiny import build_tiny_super_resolution

    return build_tiny_super_resolution(tmp_path_factory.mktemp("teacher") / "tiny-sr", residual=True)


@pytest.fixture(scope="session")
def tiny_teachers(digits_like_teacher, sr_teacher, tmp_path_factory):
    """The tiny random teachers recipes run on in tests, by `registry.RecipeInfo.tiny_teacher`."""
    from stepdistill.tiny import build_tiny_super_resolution

    x2 = build_tiny_super_resolution(tmp_path_factory.mktemp("teacher") / "tiny-sr-x2", scale=2, residual=True)
    return {"digits": digits_like_teacher, "sr": sr_teacher, "sr-x2": x2}
