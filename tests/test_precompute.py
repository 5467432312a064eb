"""`python -m stepdistill.precompute` and `data.precomputed`: latents and text embeddings written once, read by a run
instead of running the VAE's encoder and the text encoder, and the run's steps unchanged by it."""
from __future__ import annotations

import json

import pytest
import torch

from test_paired_data import CAPTIONS, metadata_folder

from stepdistill.precompute import PrecomputeConfig, main, precompute
from stepdistill.training.sections import DataConfig


@pytest.fixture
def made(tmp_path):
    folder = metadata_folder(tmp_path / "images")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\nanother prompt\n")
    cfg = PrecomputeConfig(teacher="tiny-sd", data=DataConfig(images=str(folder), prompts=str(prompts),
                                                              loader_workers=0),
                           output=str(tmp_path / "pre"), batch_size=4, shard_size=4, dtype="float32")
    return cfg, precompute(cfg)


def test_the_folder_holds_each_images_latent_and_each_texts_embedding(made):
    from stepdistill.data.paired import MetadataFolder, PairedImages
    from stepdistill.data.precomputed import EmbeddingStore, PrecomputedLatents, read_index
    from stepdistill.latents import LatentSpace
    from stepdistill.prompt_encoders import prompt_encoder
    from stepdistill.teachers import load_teacher

    cfg, out = made
    index = read_index(out)
    assert index["latent_shards"] == ["latents-00000.safetensors", "latents-00001.safetensors"]  # 6 rows, 4 a shard
    assert index["count"] == 6 and index["captions"] and not index["labels"]
    teacher = load_teacher("tiny-sd")
    space = LatentSpace(teacher.load_component("vae"), 64)
    images = PairedImages(MetadataFolder(cfg.data.images, want="captions"), 64)
    latents = PrecomputedLatents(out, index)
    latents.caption_offset = 2
    for i in (0, 5):
        torch.testing.assert_close(latents[i]["images"], space.encode(images[i]["images"][None])[0])
        assert int(latents[i]["class_labels"]) == 2 + i
    store = EmbeddingStore(out, index)
    encoder = prompt_encoder(teacher, (64, 64))
    for text in ("a prompt", CAPTIONS[4]):
        torch.testing.assert_close(store.rows([text])["hidden"], encoder.encode([text])["hidden"])


def test_a_run_on_the_folder_steps_as_the_run_on_the_images_without_encoding_anything(made, tmp_path, monkeypatch,
                                                                                        fresh_accelerate_state):
    import dmd2
    import quick

    from stepdistill.training import Draw

    cfg, out = made
    common = [f"data.prompts={cfg.data.prompts}", "train.batch_size=2", "optim.update_ratio=1", "data.loader_workers=0"]
    logs = {}
    for name, source in (("images", f"data.images={cfg.data.images}"), ("precomputed", f"data.precomputed={out}")):
        run = dmd2.setup(quick.config("dmd2", "tiny-sd", tmp_path / name, source, *common))
        s = run.setup
        if name == "precomputed":  # nothing is encoded in the steps
            from stepdistill.data.precomputed import PrecomputedLatents

            assert isinstance(s.dataset, PrecomputedLatents) and s.conditioner.store is not None
            s.conditioner._cache.clear()
            monkeypatch.setattr(s.space.vae, "encode", lambda *a, **k: pytest.fail("the VAE encoded an image"))
            monkeypatch.setattr(s.conditioner.encoder, "encode", lambda *a, **k: pytest.fail("a text was encoded"))
        logs[name] = [dmd2.step(run, Draw(s.accelerator, 2, seed=0, step=k), k) for k in range(2)]
    for a, b in zip(logs["images"], logs["precomputed"]):
        assert a.keys() == b.keys() and "loss_d" in a  # the GAN's real half: latents read, not encoded
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_a_folder_of_another_teacher_or_a_random_crop_is_refused(made, tmp_path, capsys, fresh_accelerate_state):
    import dmd2
    import quick

    cfg, out = made
    index = json.loads((out / "index.json").read_text())
    index["identity"]["vae_weights"] = "0123456789abcdef"
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="was written for vae_weights=0123456789abcdef"):
        dmd2.setup(quick.config("dmd2", "tiny-sd", tmp_path / "run", f"data.precomputed={out}"))
    with pytest.raises(SystemExit) as stop:
        main(["teacher=tiny-sd", f"data.images={cfg.data.images}", "data.random_flip=true", f"output={tmp_path / 'x'}"])
    assert stop.value.code == 2 and "random_flip=true draw a new crop each step" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
