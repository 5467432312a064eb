"""`eval/evaluate.py` end to end on a COCO-style protocol, offline: an exported text-to-image student generates one
image per caption of a COCO annotation file, and `calc` scores them against a reference folder with FID (Inception
from a local weights file) and CLIP score (an open_clip model from a local checkpoint). The networks are random and
tiny; the plumbing (captions, seeds, weights files, the results' rows) is what is checked."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from test_evaluate_exports import _text_student, tiny  # noqa: F401 (tiny: a fixture)
from test_evaluation_fid_clip import TINY_CLIP

CAPTIONS = {1: "a photo of a cat", 2: "a red square", 3: "a bowl of fruit", 4: "a lighthouse at dusk"}


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """pytorch-fid's Inception architecture with random weights, and a tiny open_clip checkpoint, as files."""
    import open_clip
    import cleanfid.inception_pytorch as inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # where the Inception file is placed
    with monkeypatch.context() as m:
        m.setattr(inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = inception.fid_inception_v3()
    torch.save(net.state_dict(), tmp_path / "pt_inception.pth")
    config = tmp_path / "stepdistill-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    clip = open_clip.create_model("stepdistill-tiny-clip", pretrained=None)
    torch.save({"state_dict": clip.state_dict()}, tmp_path / "tiny_clip.pt")
    return tmp_path / "pt_inception.pth", tmp_path / "tiny_clip.pt"


def test_coco_captions_are_each_images_first(tmp_path):
    from stepdistill.evaluation.protocols import read_captions

    path = tmp_path / "captions.json"
    path.write_text(json.dumps({"annotations": [{"id": 5, "image_id": 2, "caption": " b "},
                                                {"id": 9, "image_id": 1, "caption": "a, second"},
                                                {"id": 3, "image_id": 1, "caption": "a"}]}))
    assert read_captions(str(path)) == ["a", "b"]
    path.write_text(json.dumps({"annotations": [{"image_id": 1}]}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        read_captions(str(path))


@pytest.mark.slow  # Inception at 299 px on the CPU: about 30 s
def test_a_text_to_image_export_is_scored_on_a_coco_style_protocol(tiny, tmp_path, offline_weights, capsys):
    from stepdistill.evaluation.cli import main

    inception, clip = offline_weights
    student = _text_student(tiny("sd15"), 999.0, timesteps=(999,))
    folder = student.export(tmp_path / "pipeline")
    annotations = {"images": [{"id": i} for i in CAPTIONS],  # COCO's layout: a second caption of image 1 after
                   "annotations": [*({"id": 10 + i, "image_id": i, "caption": c} for i, c in CAPTIONS.items()),
                                   {"id": 99, "image_id": 1, "caption": "not the first caption"}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(annotations))
    ref = tmp_path / "val2017"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in CAPTIONS:
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(ref / f"{i:012d}.jpg")
    common = ["--protocol", "coco2017_5k", "--num-images", "4", "--sets", "0", "--outdir", str(tmp_path / "eval"),
              "--captions", str(tmp_path / "captions_val2017.json"), "--device", "cpu"]
    main(["gen", *common, "--model", str(folder), "--batch-size", "2"])
    generated = sorted((tmp_path / "eval").rglob("meta.json"))
    assert len(generated) == 1
    meta = json.loads(generated[0].read_text())
    assert meta["num_images"] == 4 and meta["conditioning"] == "caption" and meta["nfe"] == 1
    main(["calc", *common, "--ref", str(ref), "--fid-mode", "legacy_pytorch", "--inception-weights", str(inception),
          "--clip-model", "stepdistill-tiny-clip", "--clip-pretrained", str(clip),
          "--results", str(tmp_path / "results.json")])
    result = json.loads((tmp_path / "results.json").read_text())
    rows = result["rows"]
    assert len(rows) == 1
    row = rows[0]
    assert np.isfinite(row["fid"]) and row["fid"] > 0 and -1 <= row["clip_score"] <= 1, row
    assert result["protocol"]["name"] == "coco2017_5k" and result["n_samples"] == 4
