"""Per-image seeds: an image depends on its seed only, not on the batch size or the process count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from stepdistill.evaluation.generate import (PipelineModel, StackedRandomGenerator, TeacherModel, generate_images,
                                             load_model, read_images)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def teacher_dir(digits_like_teacher):
    return digits_like_teacher


def _one_by_one(model, labels, seeds, nfe):
    return torch.cat([model(labels[i:i + 1], StackedRandomGenerator(seeds[i:i + 1]), nfe) for i in range(len(seeds))])


def test_stacked_generator_draws_per_seed():
    a = StackedRandomGenerator([5, 9]).randn((2, 3))
    b = StackedRandomGenerator([9]).randn((2, 3))
    assert torch.equal(a[1:], b)


def test_teacher_images_do_not_depend_on_batch_size(teacher_dir):
    model = load_model(str(teacher_dir), sampler="dpmpp_2m")
    assert isinstance(model, TeacherModel)
    seeds, labels = list(range(100, 107)), [i % 10 for i in range(7)]
    batch = model(labels, StackedRandomGenerator(seeds), 3)
    torch.testing.assert_close(batch, _one_by_one(model, labels, seeds, 3), atol=1e-5, rtol=1e-5)


def test_exported_student_images_do_not_depend_on_batch_size(teacher_dir, tmp_path):
    """A 2-step exported pipeline: its re-noising draws come from the per-image generators too."""
    from stepdistill.export import export_class_conditional
    from stepdistill.sampler_spec import SamplerSpec, student_record

    unet = UNet2DModel.from_pretrained(teacher_dir / "unet")
    scheduler = DDPMScheduler.from_pretrained(teacher_dir / "scheduler")
    spec = SamplerSpec(timesteps=(999, 499), input_scale=float((1 - scheduler.alphas_cumprod[999]).sqrt()))
    folder = export_class_conditional(tmp_path / "pipe", unet, dict(scheduler.config), timesteps=[999, 499],
                                      null_label=10, model_card=dict(recipe="dmd2"),
                                      record=student_record(spec, recipe="dmd2", condition="class", shape=(1, 16, 16)))
    model = load_model(str(folder))
    assert isinstance(model, PipelineModel) and (model.name, model.native_nfe, model.sampler) == ("dmd2", 2, "multistep")
    seeds, labels = list(range(7)), [3, 1, 4, 1, 5, 9, 2]
    batch = model(labels, StackedRandomGenerator(seeds), 2)
    torch.testing.assert_close(batch, _one_by_one(model, labels, seeds, 2), atol=1e-5, rtol=1e-5)
    assert model.pipe.config.timesteps == [999, 499]  # an NFE grid point other than its own leaves it intact
    assert model(labels[:2], StackedRandomGenerator(seeds[:2]), 4).shape == (2, 1, 16, 16)
    assert model.pipe.config.timesteps == [999, 499]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_one_and_two_processes_write_the_same_images(teacher_dir, tmp_path):
    labels, seeds = [i % 10 for i in range(14)], list(range(14))
    generate_images(TeacherModel(str(teacher_dir), "ddim"), labels, seeds, 2, tmp_path / "one", batch_size=3,
                    image_format="npz", progress=False)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", "2", "--multi_gpu", str(ROOT / "eval" / "evaluate.py"), "gen",
           "--protocol", "digits", "--model", str(teacher_dir), "--sampler", "ddim", "--nfe", "2", "--num-images", "14",
           "--sets", "0", "--batch-size", "7", "--outdir", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True, timeout=300)
    folder = tmp_path / "two" / "teacher-ddim" / "nfe002" / "set0"
    assert len(list(folder.glob("images_rank*.npz"))) == 2
    meta = json.loads((folder / "meta.json").read_text())
    assert (meta["processes"], meta["image_seeds"], meta["nfe"]) == (2, [0, 13], 2)
    one, seeds_one = read_images(tmp_path / "one")
    two, seeds_two = read_images(folder)
    assert seeds_one.tolist() == seeds_two.tolist() == seeds
    assert np.abs(one.astype(int) - two.astype(int)).max() <= 1  # uint8 rounding of float noise at most
    assert (one != two).mean() < 0.01


def test_an_earlier_runs_images_are_never_scored_with_a_new_set(teacher_dir, tmp_path):
    """Generating into a folder removes what an earlier run left there (more seeds, another format)."""
    from PIL import Image

    from stepdistill.evaluation.generate import read_images

    model = load_model(str(teacher_dir), sampler="dpmpp_2m")
    folder = tmp_path / "set0"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(folder / "00000099.png")
    np.savez(folder / "images_rank001.npz", images=np.zeros((3, 16, 16, 1), np.uint8), seeds=np.array([7, 8, 9]))
    generate_images(model, [0, 1], [0, 1], 1, folder, progress=False)
    images, seeds = read_images(folder)
    assert seeds.tolist() == [0, 1] and images.shape[0] == 2


def test_bad_evaluation_inputs_are_refused_before_any_work(tmp_path):
    """`--nfe 0` and a half-written checkpoint (`*.tmp`, or no step.json) get one clear message."""
    from stepdistill.evaluation import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["gen", "--protocol", "digits", "--model", "digits", "--nfe", "0", "--outdir", str(tmp_path)])
    assert exit_info.value.code == 2
    half = tmp_path / "checkpoints" / "step_00000004.tmp"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        load_model(str(half))


def test_every_model_goes_to_the_device_it_is_given(teacher_dir, tmp_path, monkeypatch):
    """`--device` moves the teacher and the exported pipeline there, and each image's noise is drawn on the CPU from
    its seed, then moved: the same images on any device (a CUDA generator would draw other numbers)."""
    from diffusers import DiffusionPipeline

    import stepdistill.teachers as teachers
    from stepdistill.export import export_class_conditional
    from stepdistill.sampler_spec import SamplerSpec, student_record

    placed = []
    load = teachers.load_teacher
    monkeypatch.setattr(teachers, "load_teacher", lambda source, **kw: (placed.append(("teacher", str(kw.get("device")))),
                                                                        load(source, **kw))[1])
    move = DiffusionPipeline.to
    monkeypatch.setattr(DiffusionPipeline, "to", lambda self, *a, **kw: (placed.append(("pipeline", str(a[0]))),
                                                                         move(self, *a, **kw))[1])
    unet = UNet2DModel.from_pretrained(teacher_dir / "unet")
    scheduler = DDPMScheduler.from_pretrained(teacher_dir / "scheduler")
    spec = SamplerSpec(timesteps=(999,), input_scale=float((1 - scheduler.alphas_cumprod[999]).sqrt()))
    folder = export_class_conditional(tmp_path / "pipe", unet, dict(scheduler.config), timesteps=[999],
                                      null_label=10, model_card=dict(recipe="dmd2"),
                                      record=student_record(spec, recipe="dmd2", condition="class", shape=(1, 16, 16)))
    load_model(str(teacher_dir), device="cpu")
    load_model(str(folder), device="cpu")
    assert placed == [("teacher", "cpu"), ("pipeline", "cpu")]
    assert all(g.device == torch.device("cpu") for g in StackedRandomGenerator([1, 2]).generators)
