"""Corrupt inputs fail at setup, naming the file: image folders are decoded completely at construction (every
format; `skip_corrupt` leaves bad files out with one warning), and prompts cut at the text encoder's token limit
are reported (how many, the limit, an example, prompts that cutting made one condition)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from stepdistill.data.folders import CorruptImageError, ImageFolder


def _image(seed: int = 0, size: int = 48) -> Image.Image:
    # noise, so that the encoded file is large enough for half of it to cut into the pixel data
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _truncated(path, fmt: str):
    buf = io.BytesIO()
    _image(1).save(buf, fmt)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.fixture
def folder(tmp_path):
    for i in range(3):
        _image(i).save(tmp_path / f"good{i}.png")
    return tmp_path


def test_truncated_jpeg_refused_at_construction_naming_it(folder):
    bad = _truncated(folder / "cut.jpg", "JPEG")
    with Image.open(bad) as im:
        im.verify()  # headers are intact: only a full decode finds the truncation
    with pytest.raises(CorruptImageError, match="cut.jpg") as err:
        ImageFolder(folder, 8)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "truncated" in message and "data.skip_corrupt=true" in message


def test_truncation_is_found_even_with_load_truncated_images(folder, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as some other library may have set it
    _truncated(folder / "cut.jpg", "JPEG")
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        ImageFolder(folder, 8)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored


def test_skip_corrupt_leaves_bad_files_out_with_one_warning(folder):
    _truncated(folder / "cut.jpg", "JPEG")
    _truncated(folder / "cut.png", "PNG")
    (folder / "noise.webp").write_bytes(b"not a webp file " * 16)
    with pytest.warns(UserWarning, match=r"skipped 3 corrupt image\(s\) of 6") as record:
        ds = ImageFolder(folder, 8, skip_corrupt=True)
    assert len([w for w in record if "corrupt" in str(w.message)]) == 1
    message = str(record[0].message)
    assert all(name in message for name in ("cut.jpg", "cut.png", "noise.webp"))
    assert [p.name for p in ds.paths] == ["good0.png", "good1.png", "good2.png"]
    assert ds[2]["images"].shape == (3, 8, 8)


@pytest.mark.parametrize("name,make", [
    ("cut.png", lambda p: _truncated(p, "PNG")),
    ("noise.webp", lambda p: p.write_bytes(b"not a webp file " * 16)),
    ("cut.bmp", lambda p: _truncated(p, "BMP")),
])
def test_other_formats_refused_with_the_way_out(folder, name, make):
    make(folder / name)
    with pytest.raises(CorruptImageError, match=name) as err:
        ImageFolder(folder, 8)
    assert "data.skip_corrupt=true" in str(err.value)


def test_class_labels_follow_the_skipped_files(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        _image(0).save(tmp_path / cls / "a.png")
    _truncated(tmp_path / "cat" / "b.jpg", "JPEG")
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        ds = ImageFolder(tmp_path, 8, skip_corrupt=True)
    assert ds.classes == ["cat", "dog"] and ds.labels == [0, 1]


def test_every_image_corrupt_is_an_error_even_when_skipping(tmp_path):
    _truncated(tmp_path / "cut.jpg", "JPEG")
    with pytest.raises(CorruptImageError, match="all 1 images"):
        ImageFolder(tmp_path, 8, skip_corrupt=True)


def test_skip_corrupt_is_a_data_option():
    from stepdistill.training.sections import DataConfig

    assert DataConfig().skip_corrupt is False


# ---- prompts cut at the token limit -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_encoder(tmp_path_factory):
    from stepdistill.prompt_encoders import prompt_encoder
    from stepdistill.teachers import load_teacher
    from stepdistill.tiny import build_tiny_text_to_image

    teacher = load_teacher(build_tiny_text_to_image(tmp_path_factory.mktemp("t2i") / "tiny-sd"))
    return prompt_encoder(teacher, (64, 64))


def _cut(record):
    from stepdistill.prompt_encoders import PromptTruncationWarning

    return [w for w in record if issubclass(w.category, PromptTruncationWarning)]


def test_long_prompts_warn_with_count_limit_example_and_merged(clip_encoder):
    from stepdistill.conditioning import TextConditioner

    long = "a red square " * 40  # about 120 tokens
    prompts = ["a cat", long + "on the left", long + "on the right", "a dog " * 60]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        conditioner = TextConditioner(prompts, clip_encoder)
    (w,) = _cut(record)
    message = str(w.message)
    assert "3 of 4 prompts" in message and "77" in message and "a red square" in message
    assert "2 distinct prompts are identical" in message and "on the right" in message  # the pair, by their ends
    # the prompts cut into one condition are indeed one condition
    rows = conditioner.rows(__import__("torch").tensor([1, 2]))["hidden"]
    assert (rows[0] - rows[1]).abs().max() == 0
    with warnings.catch_warnings(record=True) as record:  # encoding batch by batch: reported already
        warnings.simplefilter("always")
        conditioner.rows(__import__("torch").tensor([3, 0]))
    assert not _cut(record)


def test_each_encoding_pass_warns_once_and_short_prompts_never(clip_encoder):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clip_encoder.encode(["a cat", "a small red square"])
        clip_encoder.encode(["a blue circle " * 30, "a green circle " * 30, "a cat"])
    (w,) = _cut(record)
    assert "2 of 3 prompts" in str(w.message) and "identical" not in str(w.message)


def test_long_prompts_warn_for_the_pipeline_families(tmp_path):
    """SD3: its tokenizers are checked too (two CLIPs at 77, T5 at its own max_sequence_length)."""
    from stepdistill.prompt_encoders import prompt_encoder
    from stepdistill.teachers import load_teacher
    from stepdistill.tiny import build_tiny_text_to_image

    teacher = load_teacher(build_tiny_text_to_image(tmp_path / "tiny-sd3", family="sd3"))
    encoder = prompt_encoder(teacher, (64, 64))
    long = "a red square " * 40
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        encoder.encode([long + "on the left", "a cat"])
    (w,) = _cut(record)
    assert "1 of 2 prompts" in str(w.message) and "77 tokens: tokenizer, tokenizer_2" in str(w.message)
