"""The tiny local SD-family pipeline: loads offline with stock diffusers, samples, is deterministic and small."""

import pytest
import torch

from stepdistill.tiny import build_tiny_text_to_image, ensure_tiny_text_to_image, main

PROMPTS = ["a red square", "two cats"]


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """Built once for the module, at `<root>/tiny-sd` so `ensure_tiny_text_to_image(root)` finds it."""
    return build_tiny_text_to_image(tmp_path_factory.mktemp("cache") / "tiny-sd")


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd)


def _sample(pipe):
    return pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
                output_type="pt").images


def test_folder_layout_and_size(tiny_sd):
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]:
        assert (tiny_sd / sub).is_dir(), sub
    weights = sorted(p.relative_to(tiny_sd).as_posix() for p in tiny_sd.rglob("*")
                     if p.suffix in {".safetensors", ".bin", ".pt", ".ckpt"})
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]
    assert sum(p.stat().st_size for p in tiny_sd.rglob("*") if p.is_file()) < 5 * 2**20


def test_pipeline_samples_and_is_deterministic(pipe):
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    images = _sample(pipe)
    assert images.shape == (2, 3, 64, 64)
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, _sample(pipe))


def test_generic_loader_and_scheduler_config(tiny_sd):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    loaded = DiffusionPipeline.from_pretrained(tiny_sd)
    assert type(loaded) is StableDiffusionPipeline
    cfg = loaded.scheduler.config
    assert (cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps) == ("epsilon", "scaled_linear", 1000)
    assert (cfg.beta_start, cfg.beta_end) == (0.00085, 0.012)
    assert loaded.text_encoder.config.vocab_size == len(loaded.tokenizer)
    assert loaded.unet.config.cross_attention_dim == loaded.text_encoder.config.hidden_size


def test_tokenizer_pads_truncates_and_round_trips(pipe):
    tok = pipe.tokenizer
    assert tok.model_max_length == 77
    batch = tok(["A  Photo of two cats", "word " * 200, "émoji 🐱 & Ünïcode, 42!"], padding="max_length",
                max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    assert batch.shape == (3, 77)
    assert batch[0, 0] == tok.bos_token_id and batch[0, -1] == tok.pad_token_id
    assert batch[1, -1] == tok.eos_token_id  # truncation keeps the end-of-text token
    assert (batch != tok.unk_token_id).any()
    assert tok.decode(batch[0], skip_special_tokens=True) == "a photo of two cats"
    assert tok.decode(batch[2], skip_special_tokens=True).startswith("émoji 🐱 &")
    assert len(tok("a photo of a cat").input_ids) == 7  # learned merges: one token a common word


def test_same_seed_same_bytes_and_prediction_type(tiny_sd, tmp_path):
    rng = torch.get_rng_state()
    other = build_tiny_text_to_image(tmp_path / "v", seed=0, prediction_type="v_prediction")
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is left alone
    for f in ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
              "text_encoder/model.safetensors"]:
        assert (other / f).read_bytes() == (tiny_sd / f).read_bytes(), f
    assert '"v_prediction"' in (other / "scheduler" / "scheduler_config.json").read_text()
    reseeded = build_tiny_text_to_image(tmp_path / "s1", seed=1)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (reseeded / unet).read_bytes() != (tiny_sd / unet).read_bytes()


def test_existing_folders_are_kept_and_cache_is_reused(tiny_sd, tmp_path, monkeypatch, capsys):
    stamp = (tiny_sd / "model_index.json").stat().st_mtime_ns
    assert build_tiny_text_to_image(tiny_sd, seed=5) == tiny_sd  # complete: left as it is
    assert ensure_tiny_text_to_image(tiny_sd.parent) == tiny_sd
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tiny_sd.parent))
    assert ensure_tiny_text_to_image() == tiny_sd
    main([str(tiny_sd)])
    assert capsys.readouterr().out.strip() == str(tiny_sd)
    assert (tiny_sd / "model_index.json").stat().st_mtime_ns == stamp

    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="model_index.json"):
        build_tiny_text_to_image(tmp_path / "stranger")
    assert (tmp_path / "stranger" / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="v_prediction"):
        build_tiny_text_to_image(tmp_path / "bad", prediction_type="x_start")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stranger"]  # nothing half-written left behind
