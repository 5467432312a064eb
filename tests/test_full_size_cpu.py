"""The real-model path at full size, once, on a CPU (`eval/full_size_cpu.py` is the full measurement): a Stable
Diffusion 1.5 pipeline of the real shapes (UNet 859.5 M, the SD VAE, CLIP-L; random weights built offline) takes one
DMD2 step with a LoRA generator and a LoRA fake score at 32x32 latents under bf16 autocast, through the recipe's own
`setup` and `step`; its export loads in stock diffusers and samples a finite image. 1-3 minutes on 2 cores, a peak of
~14 GB of RAM (the export makes float32 copies of the UNet): skipped where less than 16 GiB is available."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GIB = 2 ** 30
UNET_PARAMETERS = 859_520_964  # assets/model_configs/README.md


def _script():
    spec = importlib.util.spec_from_file_location("full_size_cpu", ROOT / "eval" / "full_size_cpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_dmd2_lora_step_on_the_full_size_sd15_under_bf16_and_its_export_in_stock_diffusers(tmp_path,
                                                                                             fresh_accelerate_state):
    import psutil

    available = psutil.virtual_memory().available
    if available < 16 * GIB:
        pytest.skip(f"the full-size SD 1.5 run needs 16 GiB of available RAM; this machine has {available / GIB:.1f}")
    import dmd2
    import numpy as np
    from diffusers import DiffusionPipeline

    from stepdistill.training import Draw, trainable_params

    script = _script()
    teacher = script.build_sd15(tmp_path / "sd15")
    images = script.random_images(tmp_path / "images", n=2)
    cfg = script.dmd2_config(teacher, images, tmp_path / "run", rank=4)  # the SD 1.5 preset, LoRA G and fake score
    run = dmd2.setup(cfg)
    s = run.setup
    assert s.shape == (4, 32, 32)
    net, generator = s.teacher.net, s.unwrap(run.generator).net
    assert sum(p.numel() for n, p in net.named_parameters() if "lora_" not in n) == UNET_PARAMETERS
    # frozen in bf16: the teacher's UNet (under the LoRA fake score too), the LoRA generator's own base, VAE, CLIP
    for module in (net, generator):
        assert {p.dtype for n, p in module.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for p in s.space.vae.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in s.conditioner.encoder.text_encoder.parameters()} == {torch.bfloat16}
    trained = trainable_params(run.generator, run.fake_score, run.head)
    lora = [p for module in (net, generator) for n, p in module.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora) and {id(p) for p in lora} <= {id(p) for p in trained}
    assert {p.dtype for p in trained} == {torch.float32}
    before = {n: p.detach().clone() for n, p in generator.named_parameters() if "lora_B" in n}

    logs = dmd2.step(run, Draw(s.accelerator, cfg.train.batch_size, cfg.train.seed, 0), 0)
    assert {"loss_dm", "loss_fake", "loss_g_gan", "loss_d"} <= logs.keys()
    assert all(np.isfinite(v) for v in logs.values()), logs
    assert {p.dtype for p in trained} == {torch.float32}
    assert any(not torch.equal(p, before[n]) for n, p in generator.named_parameters() if n in before)  # G updated

    folder = dmd2.students(run)[0].use_ema().unwrapped(s.accelerator).export(tmp_path / "export")
    del run, s, net, generator, trained, lora
    kwargs, _ = script._card_call(folder)
    assert kwargs["num_inference_steps"] == 1 and kwargs["timesteps"] == [999]
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert sum(p.numel() for p in pipe.unet.parameters()) == UNET_PARAMETERS
    image, _, _ = script.sample(pipe, kwargs, 256, "a red square on a white background")
    assert image.shape == (1, 256, 256, 3) and np.isfinite(image).all()
