"""clean-fid integration through a custom feature extractor, the offline weights errors, and CLIP score
plumbing on a tiny randomly initialised open_clip model (no network anywhere)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from PIL import Image

from stepdistill.evaluation import fid as fid_mod
from stepdistill.evaluation.clip_score import ClipScoreConfig, ClipScorer, ClipWeightsError
from stepdistill.evaluation.fid import FeatureStats, FidConfig, InceptionWeightsError, fid_kid, folder_features
from stepdistill.evaluation.protocols import Protocol
from stepdistill.evaluation.reference import build_reference


class PooledFeatures(torch.nn.Module):
    """uint8-range NCHW (299 x 299 after clean-fid's resize) -> 8 fixed random features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 4 * 4, 8)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x / 255, 4).flatten(1))


def _folder(path, n, seed, shift=0):
    rng = np.random.default_rng(seed)
    path.mkdir()
    for i in range(n):
        Image.fromarray(np.clip(rng.normal(128 + shift, 60, (24, 32, 3)), 0, 255).astype(np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_cleanfid_end_to_end_with_custom_extractor(tmp_path):
    from cleanfid import fid as cleanfid

    a, b = _folder(tmp_path / "a", 12, 0), _folder(tmp_path / "b", 12, 1, shift=30)
    cfg, fx = FidConfig(mode="clean", batch_size=5), PooledFeatures().eval()
    fa = folder_features(a, cfg, feature_extractor=fx, verbose=False)
    assert fa.shape == (12, 8)
    proto = Protocol("toy", "fid", num_images=12, conditioning="none")
    ref = build_reference(proto, str(b), cfg, feature_extractor=fx)
    ref.save(tmp_path / "ref.npz")
    ref = FeatureStats.load(tmp_path / "ref.npz")
    assert ref.settings["features"] == "custom" and ref.settings["mode"] == "clean"
    gen = fid_mod.features_to_stats(fa, {})
    ours = fid_kid(gen, ref, cfg)
    theirs = cleanfid.compute_fid(str(a), str(b), mode="clean", custom_feat_extractor=fx, num_workers=0,
                                  batch_size=5, device=torch.device("cpu"), verbose=False)
    assert ours["fid"] == pytest.approx(theirs, rel=1e-4)
    assert ours["fid"] > 0.1
    assert fid_kid(gen, fid_mod.features_to_stats(fa, {}), cfg)["fid"] == pytest.approx(0.0, abs=1e-6)
    # npz reference batches (arr_0, uint8 NHWC) go through the same resize as folders
    imgs = np.stack([np.asarray(Image.open(p)) for p in sorted(b.glob("*.png"))])
    np.savez(tmp_path / "batch.npz", arr_0=imgs)
    from_npz = build_reference(proto, str(tmp_path / "batch.npz"), cfg, feature_extractor=fx)
    np.testing.assert_allclose(from_npz.features, ref.features, rtol=1e-5, atol=1e-5)


def _offline(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse, raising=False)
    monkeypatch.setattr(fid_mod, "CLEANFID_INCEPTION_DIR", tmp_path / "cleanfid")
    (tmp_path / "cleanfid").mkdir()
    torch.hub.set_dir(str(tmp_path / "hub"))


@pytest.mark.parametrize("mode", ["clean", "legacy_tensorflow", "legacy_pytorch"])
def test_missing_inception_weights_offline_is_one_clear_error(monkeypatch, tmp_path, mode):
    old_hub = torch.hub.get_dir()
    try:
        _offline(monkeypatch, tmp_path)
        with pytest.raises(InceptionWeightsError) as err:
            fid_mod.feature_model(FidConfig(mode=mode))
        msg = str(err.value)
        assert str(fid_mod.expected_weights_path(mode)) in msg and "--inception-weights" in msg
        with pytest.raises(InceptionWeightsError, match="does not exist"):
            fid_mod.feature_model(FidConfig(mode=mode, inception_weights=str(tmp_path / "missing.pt")))
    finally:
        torch.hub.set_dir(old_hub)


TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    path = tmp_path_factory.mktemp("clip") / "stepdistill-tiny-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return ClipScorer(ClipScoreConfig(model="stepdistill-tiny-clip", pretrained=None, batch_size=3))


def test_clip_score_plumbing_on_a_tiny_random_model(tiny_clip):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(5)]
    prompts = ["a cat", "a dog on a mat", "two birds", "a red car", "the sea"]
    scores = tiny_clip.per_image(images, prompts)
    assert scores.shape == (5,) and np.all(np.abs(scores) <= 1)
    # by hand: prefixed prompts, normalised embeddings, raw cosine
    m, pre, tok = tiny_clip.model, tiny_clip.preprocess, tiny_clip.tokenizer
    with torch.no_grad():
        fi = torch.nn.functional.normalize(m.encode_image(torch.stack([pre(Image.fromarray(i)) for i in images])), dim=-1)
        ft = torch.nn.functional.normalize(m.encode_text(tok(["A photo depicts " + p for p in prompts])), dim=-1)
    np.testing.assert_allclose(scores, (fi * ft).sum(-1).numpy(), rtol=1e-5, atol=1e-6)
    assert tiny_clip.score(images, prompts) == pytest.approx(scores.mean())
    s = tiny_clip.settings()
    assert (s["prefix"], s["times_100"], s["model"], s["pretrained"]) == ("A photo depicts ", False,
                                                                         "stepdistill-tiny-clip", None)
    x100 = ClipScorer.__new__(ClipScorer)
    x100.__dict__.update(tiny_clip.__dict__, cfg=ClipScoreConfig(model="stepdistill-tiny-clip", pretrained=None,
                                                                 times_100=True))
    # a second forward pass may round differently (BLAS kernels vary by CPU): the raw check's atol, x100
    np.testing.assert_allclose(x100.per_image(images, prompts), 100 * scores, rtol=1e-5, atol=1e-4)
    assert "x 100" in x100.settings()["score"]


def test_missing_clip_weights_is_one_clear_error(tiny_clip, tmp_path):
    with pytest.raises(ClipWeightsError, match="--clip-pretrained"):
        ClipScorer(ClipScoreConfig(model="stepdistill-tiny-clip", pretrained=str(tmp_path / "missing.safetensors")))
