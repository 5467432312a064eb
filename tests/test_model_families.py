"""SDXL, SD3 and Flux through the shared design, on tiny random pipelines of the real classes (`stepdistill.tiny`):
conditioning reaches the network, the flow denoiser's x0, DMD2 trains and its export samples in stock diffusers
as the student does."""

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
import dmd2  # noqa: E402
from stepdistill.conditioning import TextConditioner  # noqa: E402
from stepdistill.prompt_encoders import prompt_encoder  # noqa: E402
from stepdistill.teachers import load_teacher  # noqa: E402
from stepdistill.tiny import build_tiny_text_to_image  # noqa: E402

FAMILIES = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The tiny pipelines where `load_teacher("tiny-<family>")` finds them."""
    root = tmp_path_factory.mktemp("cache")
    for family in FAMILIES:
        build_tiny_text_to_image(root / f"tiny-{family}", family=family)
    return root


def _conditioner(teacher, prompts=("a red square", "a cat")):
    return TextConditioner(list(prompts), prompt_encoder(teacher, (64, 64)))


def test_sdxl_pooled_embeddings_and_size_ids_reach_the_unet(cache):
    teacher = load_teacher(cache / "tiny-sdxl")
    cond = _conditioner(teacher).cond(torch.tensor([0, 1]))
    added = cond["added_cond_kwargs"]
    assert cond["encoder_hidden_states"].shape == (2, 77, 64)  # two CLIPs joined on features (32 + 32)
    assert added["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(cache / "tiny-sdxl", unet=None, vae=None)
    hidden, _, pooled, _ = pipe.encode_prompt(["a red square", "a cat"], device="cpu",
                                              do_classifier_free_guidance=False)
    torch.testing.assert_close(cond["encoder_hidden_states"], hidden, atol=2e-3, rtol=2e-3)  # cached in float16
    torch.testing.assert_close(added["text_embeds"], pooled, atol=2e-3, rtol=2e-3)  # the pooled projection
    den = teacher.denoiser()
    x = torch.randn(2, 4, 8, 8)
    base = den(x, 500.0, **cond)
    for key in ("text_embeds", "time_ids"):  # each micro-condition changes the prediction: none is dropped
        other = {**added, key: added[key] + 1.0}
        assert (den(x, 500.0, **{**cond, "added_cond_kwargs": other}) - base).abs().max() > 1e-4, key


def test_sdxl_empty_prompt_is_zeros_as_the_pipeline_builds_it(cache):
    """SDXL base's `force_zeros_for_empty_prompt`: the unconditional branch is all zeros, pooled included."""
    from diffusers import DiffusionPipeline

    teacher = load_teacher(cache / "tiny-sdxl")
    uncond = _conditioner(teacher).uncond(torch.tensor([0]))
    assert uncond["encoder_hidden_states"].abs().max() == 0 and uncond["added_cond_kwargs"]["text_embeds"].abs().max() == 0
    pipe = DiffusionPipeline.from_pretrained(cache / "tiny-sdxl", unet=None, vae=None)
    _, negative, _, negative_pooled = pipe.encode_prompt("a cat", device="cpu", do_classifier_free_guidance=True,
                                                         negative_prompt=None)
    assert negative.abs().max() == 0 and negative_pooled.abs().max() == 0


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_text_conditioning_is_the_pipelines_own(cache, family):
    from diffusers import DiffusionPipeline

    teacher = load_teacher(cache / f"tiny-{family}")
    cond = _conditioner(teacher).cond(torch.tensor([1]))
    pipe = DiffusionPipeline.from_pretrained(cache / f"tiny-{family}", transformer=None, vae=None)
    if family == "sd3":
        hidden, _, pooled, _ = pipe.encode_prompt("a cat", None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=64)
    else:
        hidden, pooled, _ = pipe.encode_prompt("a cat", None, max_sequence_length=64)
        assert cond["guidance"].tolist() == [3.5]
    torch.testing.assert_close(cond["encoder_hidden_states"], hidden, atol=2e-3, rtol=2e-3)  # cached in float16
    torch.testing.assert_close(cond["pooled_projections"], pooled, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_denoiser_recovers_x0_exactly_on_a_linear_flow(cache, family):
    """A network whose output is the true velocity eps - x0 of x_t = (1 - t) x0 + t eps: the Denoiser returns x0
    at every t, through Flux's packing and timestep / 1000 as well as SD3's plain call."""
    from stepdistill.denoiser import Denoiser

    teacher = load_teacher(cache / f"tiny-{family}")
    cond = _conditioner(teacher).cond(torch.tensor([0, 1]))
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    seen = []
    net = teacher.net

    def oracle(module, args, kwargs, output):
        t = kwargs["timestep"].float() * (1.0 if family == "flux" else 1e-3)  # Flux gets t, SD3 gets 1000 t
        seen.append(t)
        u = eps - x0
        if family == "flux":
            from diffusers import FluxPipeline

            u = FluxPipeline._pack_latents(u, 2, 4, 8, 8)
        return (u,)

    handle = net.register_forward_hook(oracle, with_kwargs=True)
    try:
        for t in (0.9, 0.5, 0.05):
            x_t = (1 - t) * x0 + t * eps
            torch.testing.assert_close(Denoiser(net, teacher.schedule, "flow")(x_t, t, **cond), x0,
                                       atol=1e-5, rtol=1e-5)
    finally:
        handle.remove()
    assert [round(float(s[0]), 4) for s in seen] == [0.9, 0.5, 0.05]


def test_flux_schedule_shift_follows_the_training_resolution(cache, tmp_path):
    """Flux-dev's dynamic shift: exp(mu), mu from the token count as FluxPipeline computes it."""
    import math

    from diffusers.pipelines.flux.pipeline_flux import calculate_shift
    from stepdistill.training.setup import at_resolution

    teacher = load_teacher(cache / "tiny-flux")
    shifted = at_resolution(teacher, (4, 8, 8))
    assert shifted.shift == pytest.approx(math.exp(calculate_shift(16, 256, 4096, 0.5, 1.15)))
    assert at_resolution(load_teacher(cache / "tiny-sd3"), (4, 8, 8)).shift == 3.0  # fixed shift stays


@pytest.mark.parametrize("family", FAMILIES)
def test_dmd2_trains_two_steps_and_the_export_samples_as_the_student_in_stock_diffusers(cache, family, tmp_path,
                                                                                        monkeypatch):
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file
    from stepdistill.config import load_config
    from stepdistill.roles import make_generator

    monkeypatch.setenv("STEPDISTILL_CACHE", str(cache))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    cfg = load_config(dmd2.DMD2Config, ["--config", f"recipes/configs/dmd2/tiny_{family}.yaml",
                                        f"train.output_dir={out}"])
    dmd2.main(cfg)
    log = [json.loads(line) for line in (out / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1] and "loss_dm" in log[0]
    assert all(torch.isfinite(torch.tensor(v)) for r in log for v in r.values())

    pipe = DiffusionPipeline.from_pretrained(out / "pipeline")
    assert type(pipe).__name__ == json.loads((cache / f"tiny-{family}" / "model_index.json").read_text())["_class_name"]
    trained = {k.removeprefix("denoiser.net."): v
               for k, v in load_file(str(sorted((out / "checkpoints").glob("step_*"))[-1] / "model.safetensors")).items()}
    exported = getattr(pipe, "unet", None) or pipe.transformer
    for name, value in exported.state_dict().items():
        torch.testing.assert_close(value, trained[name], atol=1e-6, rtol=0)  # the EMA of 2 steps

    # the stock pipeline at one step, guidance off (Flux: its embedded guidance), against the student's own x0
    card = (out / "pipeline" / "README.md").read_text()
    call = dict(num_inference_steps=1, output_type="pt", height=64, width=64)
    if family == "sdxl":
        call.update(timesteps=[999], guidance_scale=0.0)
    else:
        assert "sigmas=[1.0]" in card and "max_sequence_length=64" in card
        call.update(sigmas=[1.0], max_sequence_length=64, guidance_scale=3.5 if family == "flux" else 0.0)
    images = pipe("a red square", generator=torch.Generator().manual_seed(0), **call).images

    teacher = load_teacher(cache / f"tiny-{family}")
    gen = make_generator(teacher, cfg.model.generator_timesteps[0])
    gen.net.load_state_dict(trained)
    conditioner = _conditioner(teacher, ("a red square",))
    from stepdistill.latents import LatentSpace

    space = LatentSpace(teacher.load_component("vae"), 64)
    with torch.no_grad():
        z = torch.randn(1, *space.shape, generator=torch.Generator().manual_seed(0))
        expected = space.decode(gen.eval()(z, **conditioner.cond(torch.tensor([0])))) * 0.5 + 0.5
    torch.testing.assert_close(images, expected, atol=3e-3, rtol=0)


@pytest.mark.parametrize("family", ["sdxl", "flux"])
def test_a_lora_generator_exports_as_a_lora_that_the_stock_base_pipeline_loads(cache, family, tmp_path, monkeypatch):
    """DMD2 with a LoRA generator and a LoRA fake score: `pipe.load_lora_weights(folder/lora)` on the stock base
    pipeline, with the scheduler line of the LoRA's card, gives the merged student's image for a fixed seed."""
    import diffusers
    from diffusers import DiffusionPipeline
    from stepdistill.config import load_config

    monkeypatch.setenv("STEPDISTILL_CACHE", str(cache))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "run"
    steps = "[999, 499]" if family == "sdxl" else "[1.0, 0.5]"  # two steps: the LoRA card's multistep scheduler
    dmd2.main(load_config(dmd2.DMD2Config, [
        "--config", f"recipes/configs/dmd2/tiny_{family}.yaml", f"train.output_dir={out}", "train.ema_decay=null",
        "model.generator_lora_rank=4", "model.fake_score_lora_rank=4", f"model.generator_timesteps={steps}",
        "optim.lr_generator=0.05"]))
    card = (out / "pipeline" / "lora" / "README.md").read_text()
    assert "pipe.load_lora_weights(" in card and "base_model:" not in card  # a local teacher: the user names it
    merged = DiffusionPipeline.from_pretrained(out / "pipeline")
    base = DiffusionPipeline.from_pretrained(cache / f"tiny-{family}")
    call = dict(num_inference_steps=2, height=64, width=64, output_type="pt")
    if family == "sdxl":  # the merged export's multistep LCM run starts from sigma(t_0) z, as its card says
        assert "LCMScheduler.from_config(pipe.scheduler.config, **{})" in card
        scheduler = diffusers.LCMScheduler.from_config(base.scheduler.config)
        sigma_0 = float((1 - merged.scheduler.alphas_cumprod[999]).sqrt())
        call.update(guidance_scale=0.0, timesteps=[999, 499],
                    latents=sigma_0 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    else:
        options = {"shift": 1.0, "use_dynamic_shifting": False, "stochastic_sampling": True}
        assert f"FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **{options!r})" in card
        assert "sigmas=[1.0, 0.5]" in card and "guidance_scale=3.5" in card and "max_sequence_length=64" in card
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(base.scheduler.config, **options)
        call.update(sigmas=[1.0, 0.5], guidance_scale=3.5, max_sequence_length=64)
    if family == "flux":  # FluxPipeline's re-noising steps draw from torch's global generator: the card seeds it
        assert "torch.manual_seed(0)" in card

    def sample(pipe):
        torch.manual_seed(0)
        return pipe("a red square", generator=torch.Generator().manual_seed(0), **call).images

    plain = sample(base)
    base.load_lora_weights(out / "pipeline" / "lora")
    base.scheduler = scheduler
    a, b = sample(merged), sample(base)
    torch.testing.assert_close(a, b, rtol=0, atol=3e-3)
    assert float((a - plain).abs().max()) > 1e-2  # the LoRA trained: not the base model


@pytest.mark.parametrize("family,timesteps", [("sd3", [0.714]), ("flux", [0.714]), ("sdxl", [999])])
def test_the_export_cards_code_samples_the_students_image(cache, family, timesteps, tmp_path, monkeypatch):
    """The model card's code, run as written (the first input t_0 z below t = 1 included), gives the student's
    own one-step image for the card's prompt and seed."""
    import re

    import numpy as np
    from stepdistill.export import export_text_to_image
    from stepdistill.latents import LatentSpace
    from stepdistill.roles import make_generator

    teacher = load_teacher(cache / f"tiny-{family}")
    conditioner = _conditioner(teacher, ("a photo of a cat",))
    folder = export_text_to_image(tmp_path / "pipeline", cache / f"tiny-{family}", teacher.net, timesteps=timesteps,
                                  call_options=conditioner.encoder.call_options())
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code, scope)  # noqa: S102
    gen = make_generator(teacher, timesteps[0]).eval()
    space = LatentSpace(teacher.load_component("vae"), 64)
    with torch.no_grad():
        z = torch.randn(1, *space.shape, generator=torch.Generator().manual_seed(0))
        expected = (space.decode(gen(z, **conditioner.cond(torch.tensor([0])))) * 0.5 + 0.5)[0].permute(1, 2, 0)
    got = torch.from_numpy(np.asarray(scope["image"], dtype=np.float32) / 255)
    assert float((got - expected).abs().max()) <= 1.5 / 255  # the PIL image's 8-bit rounding


def test_a_multistep_flow_export_runs_the_students_sampler(cache, tmp_path):
    """Two steps on SD3: the stock pipeline with the exported stochastic flow scheduler is x0 = G(z) at t = 1,
    then G((1 - s) x0 + s eps, s), eps drawn from torch's global generator as the pipeline's scheduler does."""
    from diffusers import DiffusionPipeline
    from stepdistill.export import export_text_to_image
    from stepdistill.latents import LatentSpace
    from stepdistill.roles import make_generator

    teacher = load_teacher(cache / "tiny-sd3")
    conditioner = _conditioner(teacher, ("a photo of a cat",))
    folder = export_text_to_image(tmp_path / "pipeline", cache / "tiny-sd3", teacher.net, timesteps=[1.0, 0.5],
                                  call_options=conditioner.encoder.call_options())
    pipe = DiffusionPipeline.from_pretrained(folder)
    torch.manual_seed(0)
    images = pipe("a photo of a cat", num_inference_steps=2, sigmas=[1.0, 0.5], height=64, width=64,
                  max_sequence_length=64, guidance_scale=0.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    gen = make_generator(teacher, 1.0).eval()
    space = LatentSpace(teacher.load_component("vae"), 64)
    cond = conditioner.cond(torch.tensor([0]))
    with torch.no_grad():
        torch.manual_seed(0)
        z = torch.randn(1, *space.shape, generator=torch.Generator().manual_seed(0))
        x0 = gen(z, **cond)
        x0 = gen(0.5 * x0 + 0.5 * torch.randn(1, *space.shape), 0.5, **cond)
        expected = space.decode(x0) * 0.5 + 0.5
    torch.testing.assert_close(images, expected, atol=3e-3, rtol=0)


def test_data_embedding_cache_mib_bounds_the_text_conditioners_cache(cache, tmp_path):
    """The key reaches the conditioner `setup_data` builds (its test of eviction: tests/test_conditioning.py)."""
    from stepdistill.training import DataConfig, setup_data

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\na cat\n")
    teacher = load_teacher(cache / "tiny-sdxl")
    for mib in (4096.0, 0.25):
        conditioner, _, _ = setup_data(DataConfig(prompts=str(prompts), embedding_cache_mib=mib), teacher, "cpu",
                                       need_images=False)
        assert conditioner.cache_bytes_limit == int(mib * 2**20)
