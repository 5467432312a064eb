"""User image folders, prompt files and natural-image SR patches (stepdistill.data)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from stepdistill.data.folders import CorruptImageError, ImageFolder
from stepdistill.data.patches import TEST_IMAGES, PatchDataset, natural_image_names, natural_images
from stepdistill.data.prompts import PromptDataset, PromptFileError, load_prompts


def _save(path, size=(40, 30), color=(200, 30, 90), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 120).save(path)
    return path


# ---- ImageFolder -------------------------------------------------------------------------------

def test_flat_folder_no_labels(tmp_path):
    _save(tmp_path / "b.png")
    _save(tmp_path / "a.JPG", size=(30, 50))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "no_images").mkdir()  # a sub-folder without images does not make a class
    ds = ImageFolder(tmp_path, 16, random_flip=True)
    assert [p.name for p in ds.paths] == ["a.JPG", "b.png"]
    assert len(ds) == 2 and ds.num_classes == 0 and ds.classes == []
    item = ds[0]
    assert set(item) == {"images"}
    x = item["images"]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    # Solid colour (200, 30, 90) survives resize/crop: 200 / 127.5 - 1.
    assert torch.allclose(x[:, 8, 8], torch.tensor([200, 30, 90]) / 127.5 - 1, atol=2 / 127.5)


def test_grayscale_and_random_crop(tmp_path):
    _save(tmp_path / "x.png", size=(64, 20))
    ds = ImageFolder(tmp_path, 8, channels=1, center_crop=False)
    x = ds[0]["images"]
    assert x.shape == (1, 8, 8) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path, 8, channels=2)


def test_class_subfolders(tmp_path):
    _save(tmp_path / "dog" / "1.png", color=(255, 255, 255))
    _save(tmp_path / "cat" / "1.png", color=(0, 0, 0))
    _save(tmp_path / "cat" / "sub" / "2.webp", color=(0, 0, 0))
    (tmp_path / "empty_dir").mkdir()  # sub-folders without images are not classes
    ds = ImageFolder(tmp_path, 12)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 3
    labels = [int(ds[i]["class_labels"]) for i in range(3)]
    assert labels == [0, 0, 1]
    assert ds[0]["class_labels"].dtype == torch.long and ds[0]["class_labels"].ndim == 0
    assert torch.allclose(ds[0]["images"], torch.full((3, 12, 12), -1.0))
    assert torch.allclose(ds[2]["images"], torch.full((3, 12, 12), 1.0))


def test_corrupt_file_named(tmp_path):
    _save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(CorruptImageError, match="broken.png") as err:
        ImageFolder(tmp_path, 8)
    assert isinstance(err.value, ValueError)
    ImageFolder(tmp_path, 8, verify=False)  # only checked when asked


def test_missing_empty_and_mixed_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(tmp_path / "nope", 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="empty"):
        ImageFolder(tmp_path / "empty", 8)
    mixed = tmp_path / "mixed"
    _save(mixed / "cls" / "a.png")
    _save(mixed / "stray.jpeg")
    with pytest.raises(ValueError, match="stray.jpeg"):
        ImageFolder(mixed, 8)


# ---- prompts -----------------------------------------------------------------------------------

def test_load_prompts_txt_csv_tsv(tmp_path):
    (tmp_path / "p.txt").write_text("  a cat  \n\n a dog\n   \n", encoding="utf-8")
    assert load_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    (tmp_path / "p.csv").write_text('id,Caption,extra\n1,"a red, round ball",x\n2,,y\n3,a tree,z\n')
    assert load_prompts(tmp_path / "p.csv") == ["a red, round ball", "a tree"]
    assert load_prompts(tmp_path / "p.csv", column="extra") == ["x", "y", "z"]
    (tmp_path / "p.tsv").write_text("text\tother\nsun over hills\t1\n")
    assert load_prompts(tmp_path / "p.tsv") == ["sun over hills"]


def test_load_prompts_json_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(["one", " two ", ""]))
    assert load_prompts(tmp_path / "a.json") == ["one", "two"]
    rows = [{"prompt": "p1", "c": "c1"}, {"prompt": "p2", "c": "c2"}]
    (tmp_path / "b.json").write_text(json.dumps(rows))
    assert load_prompts(tmp_path / "b.json") == ["p1", "p2"]
    assert load_prompts(tmp_path / "b.json", column="c") == ["c1", "c2"]
    (tmp_path / "c.jsonl").write_text('{"caption": "x"}\n\n"plain"\n{"caption": "y"}\n')
    assert load_prompts(tmp_path / "c.jsonl") == ["x", "plain", "y"]


def test_load_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(tmp_path / "missing.txt")
    (tmp_path / "p.yaml").write_text("- a\n")
    with pytest.raises(ValueError, match="p.yaml"):
        load_prompts(tmp_path / "p.yaml")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(PromptFileError, match="latin1.txt.*UTF-8"):
        load_prompts(tmp_path / "latin1.txt")
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(PromptFileError, match="blank.txt.*no prompts"):
        load_prompts(tmp_path / "blank.txt")
    (tmp_path / "cols.csv").write_text("id,desc\n1,x\n")
    with pytest.raises(PromptFileError, match=r"cols.csv.*\['id', 'desc'\]"):
        load_prompts(tmp_path / "cols.csv")
    with pytest.raises(PromptFileError, match=r"no column 'nope'.*\['id', 'desc'\]"):
        load_prompts(tmp_path / "cols.csv", column="nope")
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"prompt": "fine"}\n{broken\n')
    with pytest.raises(PromptFileError, match="bad.jsonl: line 3"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "key.jsonl").write_text('{"prompt": "a"}\n{"title": "b"}\n')
    with pytest.raises(PromptFileError, match=r"key.jsonl: line 2.*\['title'\]"):
        load_prompts(tmp_path / "key.jsonl")
    (tmp_path / "obj.json").write_text('{"prompt": "a"}')
    with pytest.raises(PromptFileError, match="obj.json.*list"):
        load_prompts(tmp_path / "obj.json")
    (tmp_path / "bad.json").write_text('[\n"a",\n}')
    with pytest.raises(PromptFileError, match="bad.json.*line 3"):
        load_prompts(tmp_path / "bad.json")


def test_prompt_dataset_dropout():
    prompts = [f"prompt {i}" for i in range(2000)]
    ds = PromptDataset(prompts, null_prompt_prob=0.3, seed=1)
    first = [ds[i]["prompt"] for i in range(len(ds))]
    rate = sum(p == "" for p in first) / len(first)
    assert abs(rate - 0.3) < 0.05
    assert all(p in ("", prompts[i]) for i, p in enumerate(first))
    assert [ds[i]["prompt"] for i in reversed(range(len(ds)))][::-1] == first  # order-independent
    again = PromptDataset(prompts, null_prompt_prob=0.3, seed=1)
    assert [again[i]["prompt"] for i in range(len(again))] == first
    ds.set_epoch(1)
    assert [ds[i]["prompt"] for i in range(len(ds))] != first
    assert all(PromptDataset(["a"], null_prompt_prob=1.0)[0]["prompt"] == "" for _ in range(3))
    assert PromptDataset(["a"])[0] == {"prompt": "a"}
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="null_prompt_prob"):
            PromptDataset(["a"], null_prompt_prob=bad)
    with pytest.raises(ValueError):
        PromptDataset([])


# ---- natural-image patches ---------------------------------------------------------------------

def test_natural_images():
    images, names = natural_images(), natural_image_names()
    assert len(images) == len(names) >= 7 and {"china", "flower"} <= set(names)
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    assert natural_images()[0] is images[0]  # cached


def test_patch_dataset_shapes_range_and_lr():
    ds = PatchDataset(32, scale=4, num_patches=16, seed=3)
    assert len(ds) == 16
    for i in (0, 7, 15):
        item = ds[i]
        hr, lr = item["images"], item["lr"]
        assert hr.shape == (3, 32, 32) and lr.shape == (3, 8, 8)
        assert hr.dtype == lr.dtype == torch.float32
        assert hr.min() >= -1 and hr.max() <= 1 and lr.min() >= -1 and lr.max() <= 1
        ref = F.interpolate(hr[None], size=(8, 8), mode="bicubic", antialias=True).clamp(-1, 1)[0]
        assert torch.equal(lr, ref)


def test_patch_dataset_determinism_and_split():
    a = PatchDataset(16, scale=2, num_patches=64, seed=5)
    b = PatchDataset(16, scale=2, num_patches=64, seed=5)
    assert np.array_equal(a.positions, b.positions) and torch.equal(a[10]["images"], b[10]["images"])
    c = PatchDataset(16, scale=2, num_patches=64, seed=6)
    assert not np.array_equal(a.positions, c.positions)
    test = PatchDataset(16, scale=2, num_patches=64, split="test")
    assert test.source_names and set(test.source_names) <= TEST_IMAGES
    assert not set(a.source_names) & set(test.source_names)
    assert set(a.source_names) | set(test.source_names) == set(natural_image_names())


def test_patch_dataset_validation():
    with pytest.raises(ValueError, match="divisible"):
        PatchDataset(30, scale=4)
    with pytest.raises(ValueError, match="does not fit"):
        PatchDataset(4096, scale=4)
    with pytest.raises(ValueError, match="split"):
        PatchDataset(16, split="val")
