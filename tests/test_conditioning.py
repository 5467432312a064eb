"""Conditions: what a teacher's kind of conditioning gives the recipes (keyword arguments, extra input
channels, the sample shape), read by `setup_data` from the teacher itself."""

import torch
from diffusers import DDPMScheduler, UNet2DModel

from stepdistill.conditioning import LRConditioner, Unconditional
from stepdistill.training import DataConfig, setup_data
from stepdistill.training.setup import sample_shape
from stepdistill.teachers import load_teacher


def _teacher(tmp_path, **unet):
    UNet2DModel(sample_size=16, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                **unet).save_pretrained(tmp_path / "unet")
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon").save_pretrained(tmp_path / "scheduler")
    (tmp_path / "train_config.yaml").write_text("data: digits\n")  # trained on the digits (`data.embedded`)
    return load_teacher(tmp_path)


def test_unconditional_teacher_gets_no_condition(tmp_path):
    teacher = _teacher(tmp_path, in_channels=1, out_channels=1)
    conditioner, space, dataset = setup_data(DataConfig(), teacher, "cpu", need_images=False)
    assert isinstance(conditioner, Unconditional) and dataset is None
    labels = conditioner.sample_labels(3)
    assert conditioner.cond(labels) == {} and conditioner.uncond(labels) is None
    assert sample_shape(teacher, conditioner, space) == (1, 16, 16)
    x0 = teacher.denoiser()(torch.randn(3, 1, 16, 16), 500.0, **conditioner.cond(labels))
    assert x0.shape == (3, 1, 16, 16)


@torch.no_grad()
def test_image_conditioned_teacher_concatenates_the_low_resolution_image(tmp_path):
    """A super-resolution teacher (2 input channels, 1 output): the condition is the real image with the
    label's index, downsampled 4x (antialiased bicubic), upsampled back and concatenated after c_in; the sample
    has the output's channels; the null condition (-1) is an all-zero image, so guidance has an unconditional
    branch; real images are labelled with their own index (their condition)."""
    teacher = _teacher(tmp_path, in_channels=2, out_channels=1)
    conditioner, space, dataset = setup_data(DataConfig(condition_scale=4), teacher, "cpu", need_images=False)
    assert isinstance(conditioner, LRConditioner) and conditioner.extra_channels == 1 and dataset is not None
    assert int(dataset[5]["class_labels"]) == 5
    assert sample_shape(teacher, conditioner, space) == (1, 16, 16)
    labels = torch.tensor([5, -1])
    concat = conditioner.cond(labels)["concat"]
    hr = dataset[5]["images"]
    low = torch.nn.functional.interpolate(hr[None], size=(4, 4), mode="bicubic", antialias=True).clamp(-1, 1)
    assert concat.shape == (2, 1, 16, 16) and float(concat[1].abs().max()) == 0
    up = torch.nn.functional.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(concat[:1], up)  # the 4x4 degraded image, brought back to the sample size
    assert (concat[0] - hr).abs().mean() < (concat[0] - dataset[6]["images"]).abs().mean()
    den = teacher.denoiser()
    x_t, t = torch.randn(2, 1, 16, 16), torch.tensor([300.0, 300.0])
    seen = []
    handle = den.net.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x0 = den(x_t, t, **conditioner.cond(labels))
    handle.remove()
    c_in = float(den.schedule.c_in(t[:1]))
    torch.testing.assert_close(seen[0], torch.cat([x_t * c_in, concat], dim=1))  # unscaled condition
    assert x0.shape == (2, 1, 16, 16)
    # classifier-free guidance batches the zero image as the unconditional branch
    from stepdistill.guidance import CFGDenoiser

    guided = CFGDenoiser(den, 2.0)(x_t, t, uncond=conditioner.uncond(labels), **conditioner.cond(labels))
    assert guided.shape == x0.shape and torch.isfinite(guided).all()


class _CountingEncoder:
    """A prompt encoder whose embedding of prompt i is i everywhere (64 floats: 128 bytes in float16), counting
    the prompts it encodes."""

    def __init__(self):
        self.encoded: list[str] = []

    def encode(self, texts):
        self.encoded += texts
        return {"hidden": torch.stack([torch.full((4, 16), float(t.split()[-1])) for t in texts])}

    def null(self):
        return {"hidden": torch.zeros(1, 4, 16)}

    def kwargs(self, rows):
        return {"encoder_hidden_states": rows["hidden"]}


def test_the_prompt_cache_keeps_the_most_recent_prompts_within_its_budget():
    """`data.embedding_cache_mib`: a million prompts must not fill the CPU memory of every process. Past the
    budget the least recently used prompts go, and come back encoded again, the same."""
    from stepdistill.conditioning import TextConditioner

    encoder = _CountingEncoder()
    text = TextConditioner([f"prompt {i}" for i in range(10)], encoder, cache_mib=3 * 128 / 2**20)  # 3 prompts
    first = text.embeddings(torch.tensor([1, 2, 3, 1]))
    assert [float(first[j, 0, 0]) for j in range(4)] == [1, 2, 3, 1]
    assert encoder.encoded == ["prompt 1", "prompt 2", "prompt 3"]
    text.embeddings(torch.tensor([1]))  # 1 is now the most recent: 2 goes first
    text.embeddings(torch.tensor([4]))
    assert list(text._cache) == [3, 1, 4] and text._cache_bytes == 3 * 128
    again = text.embeddings(torch.tensor([2, 3, -1]))  # 2 is encoded again; -1 is the empty prompt
    assert encoder.encoded[-1] == "prompt 2" and encoder.encoded.count("prompt 3") == 1
    assert [float(again[j, 0, 0]) for j in range(3)] == [2, 3, 0]
    assert text._cache_bytes <= text.cache_bytes_limit
