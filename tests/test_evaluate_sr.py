"""`eval/evaluate.py sr`: bicubic and each SR model on the embedded test patches or on a folder of LR images, the
rows scored by the benchmark's metrics, written as JSON, CSV and a crop grid; outputs saved as PNG files that are
what the exported pipeline gives; bad inputs refused in one line before any image is generated."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stepdistill.degradations import Degradation
from stepdistill.evaluation import cli
from stepdistill.evaluation.sr import psnr
from stepdistill.export import export_super_resolution
from stepdistill.teachers import load_teacher


def _uint8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _folders(tmp_path, n=3, size=16, scale=4):
    """HR images (smooth random fields) and their bicubic LR copies, as PNG files named img0..."""
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir(), lr_dir.mkdir()
    g = torch.Generator().manual_seed(3)
    hr = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=(size, size),
                                         mode="bilinear", align_corners=False)
    lr = Degradation(scale)(hr, seeds=list(range(n)))
    for i in range(n):
        Image.fromarray(_uint8(hr[i])).save(hr_dir / f"img{i}.png")
        Image.fromarray(_uint8(lr[i])).save(lr_dir / f"img{i}.png")
    return lr_dir, hr_dir


def test_sr_on_the_embedded_patches_writes_json_csv_and_a_crop_grid(sr_teacher, tmp_path):
    out = tmp_path / "sr.json"
    cli.main(["sr", "--model", str(sr_teacher), "--nfe", "1", "2", "--num-images", "4", "--results", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["model"], r["nfe"]) for r in rows] == [("bicubic", 0), (str(sr_teacher), 1), (str(sr_teacher), 2)]
    assert result["scale"] == 4 and result["crop_border"] == 4 and result["n_images"] == 4
    assert all(np.isfinite(r["psnr_y"]) and 0 < r["ssim_y"] <= 1 and r["seconds_per_image"] > 0 for r in rows)
    assert rows[1]["psnr_y"] != rows[2]["psnr_y"]
    assert out.with_suffix(".csv").read_text().splitlines()[0].startswith("model,sampler,nfe,psnr_y")
    assert len(out.with_suffix(".csv").read_text().splitlines()) == 4
    assert out.with_suffix(".png").stat().st_size > 0


def test_sr_on_a_folder_scores_the_exported_pipeline_and_saves_its_own_images(sr_teacher, tmp_path):
    """Folder inputs, scored against the HR folder: the bicubic row's PSNR is the metric on the files themselves,
    and each saved PNG of the pipeline row is what the pipeline gives for that LR file."""
    lr_dir, hr_dir = _folders(tmp_path)
    teacher = load_teacher(sr_teacher)
    from stepdistill.sampler_spec import SamplerSpec, student_record

    record = student_record(SamplerSpec(timesteps=(999,)), recipe="tadsr", condition="lr", shape=(3, 32, 32))
    pipe_dir = export_super_resolution(tmp_path / "pipe", teacher.net, teacher.scheduler_config, timesteps=[999],
                                       sr_scale=4, residual=True, record=record)
    out, saved = tmp_path / "folder.json", tmp_path / "images"
    cli.main(["sr", "--model", str(pipe_dir), "--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir),
              "--results", str(out), "--save-images", str(saved)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["nfe"] for r in rows] == [0, 1]
    # bicubic, recomputed from the files
    from stepdistill.degradations import bicubic_up

    def read(p):
        return torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32)).permute(2, 0, 1) / 127.5 - 1

    expected = np.mean([psnr(_uint8(bicubic_up(read(lr_dir / f"img{i}.png")[None], (16, 16))[0]),
                             np.asarray(Image.open(hr_dir / f"img{i}.png")), crop_border=4, y_channel=True)
                        for i in range(3)])
    assert rows[0]["psnr_y"] == pytest.approx(expected, abs=1e-3)
    # the pipeline's own images, one call with the evaluation's seed
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(pipe_dir), trust_remote_code=True)
    low = torch.stack([(read(lr_dir / f"img{i}.png") + 1) / 2 for i in range(3)])
    direct = pipe(image=low, generator=torch.Generator().manual_seed(0), output_type="np").images
    folder = next(p for p in saved.iterdir() if p.name.startswith("pipe"))
    for i in range(3):
        png = np.asarray(Image.open(folder / f"img{i}.png"))
        assert np.abs(png.astype(int) - (direct[i] * 255).round().astype(int)).max() <= 1


@pytest.mark.parametrize("case, match", [
    ("hr_size", "x4 of its LR image"),
    ("empty", "holds no images"),
    ("not_sr", "not a super-resolution model"),
    ("hr_without_lr", "give --lr-dir too"),
])
def test_bad_sr_inputs_get_one_line_before_any_image(case, match, sr_teacher, digits_like_teacher, tmp_path, capsys):
    lr_dir, hr_dir = _folders(tmp_path)
    args = ["sr", "--model", str(sr_teacher), "--nfe", "1", "--results", str(tmp_path / "r.json")]
    if case == "hr_size":
        Image.new("RGB", (12, 12)).save(hr_dir / "img1.png")
        args += ["--lr-dir", str(lr_dir), "--hr-dir", str(hr_dir)]
    elif case == "empty":
        (tmp_path / "none").mkdir()
        args += ["--lr-dir", str(tmp_path / "none")]
    elif case == "not_sr":
        args[2] = str(digits_like_teacher)
    else:
        args += ["--hr-dir", str(hr_dir)]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
