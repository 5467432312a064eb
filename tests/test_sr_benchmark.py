"""The SR benchmark: the high-frequency measures separate detail from blur, rows on held-out patches."""

import numpy as np
import pytest
import torch

from stepdistill.degradations import Degradation
from stepdistill.evaluation.sr import hf_energy_ratio, hf_spectrum_error
from stepdistill.sr_benchmark import SRBenchmark, bicubic_fn, patches_conditioner, save_crop_grid


def _image(seed=0, size=32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3)).astype(np.uint8)


def test_the_hf_measures_are_zero_and_one_on_the_ground_truth_and_flag_blur():
    gt = _image()
    assert hf_spectrum_error(gt, gt, scale=4) == 0 and abs(hf_energy_ratio(gt, gt, scale=4) - 1) < 1e-12
    x = torch.from_numpy(gt).permute(2, 0, 1)[None].float() / 127.5 - 1
    low = Degradation(4)(x)
    blurred = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic").clamp(-1, 1)
    blurred = ((blurred[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    noisy = np.clip(gt.astype(int) + np.random.default_rng(1).integers(-8, 9, gt.shape), 0, 255).astype(np.uint8)
    assert hf_energy_ratio(blurred, gt, scale=4) < 0.2  # bicubic cannot put back what the LR image lost
    assert hf_spectrum_error(blurred, gt, scale=4) > 3 * hf_spectrum_error(noisy, gt, scale=4)


def test_rows_on_held_out_patches_rank_the_ground_truth_above_bicubic(tmp_path):
    conditioner = patches_conditioner(32, Degradation(4), num_patches=8)
    assert set(conditioner.dataset.dataset.source_names) <= {"coffee", "flower"}
    bench = SRBenchmark(conditioner, batch_size=4)
    gt = bench.ground_truth
    row_b, bicubic = bench.evaluate(bicubic_fn(conditioner), model="bicubic")
    row_g, _ = bench.evaluate(lambda labels, g: gt[labels], model="ground truth")
    assert 15 < row_b["psnr_y"] < 40 and row_b["ssim_y"] < 1 and row_b["hf_energy_ratio"] < 0.5
    assert row_g["psnr_y"] == float("inf") and row_g["hf_spectrum_error"] == 0 and row_g["seconds_per_image"] >= 0
    assert save_crop_grid(tmp_path / "grid.png", {"bicubic": bicubic, "HR": gt}, conditioner=conditioner).is_file()


def test_the_shipped_x4_teacher_restores_detail_that_bicubic_cannot():
    """`assets/sr_teacher` on 16 held-out patches at 4 NFE: a residual model whose high-frequency spectrum error is
    well below bicubic's (0.79 against 1.29 on all 256), at a PSNR close to bicubic's."""
    from stepdistill.teachers import load_teacher
    from stepdistill.sr_benchmark import teacher_fn

    teacher = load_teacher("sr")
    den = teacher.denoiser()
    assert den.residual and teacher.index["sr_scale"] == 4
    conditioner = patches_conditioner(32, Degradation(4), num_patches=16)
    bench = SRBenchmark(conditioner)
    bicubic, _ = bench.evaluate(bicubic_fn(conditioner), model="bicubic", nfe=0)
    fn = teacher_fn(den, teacher.schedule, conditioner, sampler="dpmpp_2m", nfe=4, shape=(3, 32, 32))
    row, _ = bench.evaluate(fn, model="teacher", nfe=4)
    assert row["hf_spectrum_error"] < 0.8 * bicubic["hf_spectrum_error"]
    assert row["psnr_y"] > bicubic["psnr_y"] - 2.0


def test_every_metric_ignores_a_border_of_scale_pixels_and_nothing_inside_it():
    """The protocol crops `scale` pixels from each border (BasicSR's crop_border): an output wrong only there
    scores as the ground truth on every metric; one wrong a pixel further in does not."""
    conditioner = patches_conditioner(32, Degradation(4), num_patches=4)
    bench = SRBenchmark(conditioner, batch_size=4)
    gt = bench.ground_truth

    def framed(width):
        def fn(labels, g):
            out = gt[labels].clone()
            inner = torch.zeros_like(out, dtype=torch.bool)
            inner[..., width:-width, width:-width] = True
            return torch.where(inner, out, -out)  # a frame `width` pixels wide, inverted
        return fn

    row, _ = bench.evaluate(framed(4))
    assert row["psnr_y"] == float("inf") and row["ssim_y"] == pytest.approx(1.0) and row["hf_spectrum_error"] == 0
    wider, _ = bench.evaluate(framed(5))
    assert wider["psnr_y"] < 60 and wider["ssim_y"] < 0.999 and wider["hf_spectrum_error"] > 0
