"""`eval/evaluate.py` scores every export kind with the images the `Student` itself samples: the folder's
`student.json` says how its student samples, and nothing else is read. One student of each kind, on the tiny
random pipelines of the real classes: digits one-step, a consistency student at K of its skip grid, TCD, SD
one-step and multistep, SDXL, SD3, Flux, a LoRA student, routed multi-student and super-resolution."""

import copy
import json

import pytest
import torch

from stepdistill.conditioning import ClassConditioner, TextConditioner
from stepdistill.evaluation.generate import PipelineModel, StackedRandomGenerator, load_model
from stepdistill.latents import LatentSpace, PixelSpace
from stepdistill.roles import make_generator
from stepdistill.sampler_spec import STUDENT_JSON, SamplerSpec, read_student_json
from stepdistill.schedules import RectifiedFlow
from stepdistill.student import RoutedStudent, Student
from stepdistill.teachers import load_teacher

SEEDS = [3, 11]


def _perturbed(gen, seed):
    """A copy of the generator with different weights: a trained student is not its teacher."""
    gen = copy.deepcopy(gen)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.net.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return gen.eval()


def _student(teacher, gen, conditioner, space, shape=None, **spec) -> Student:
    sampler = SamplerSpec(input_scale=gen.input_scale, flow=isinstance(teacher.schedule, RectifiedFlow), **spec)
    return Student(generator=gen, conditioner=conditioner, schedule=teacher.schedule, sampler=sampler, space=space,
                   shape=shape or space.shape, teacher=teacher, name="dmd2")


def _expected(student, labels, steps=None):
    """The student's own images, one seed each."""
    return torch.cat([student.images(torch.tensor([c]), torch.Generator().manual_seed(s), steps)
                      for c, s in zip(labels, SEEDS)])


def _evaluated(folder, conditions, nfe):
    model = load_model(str(folder))
    assert isinstance(model, PipelineModel)
    return model(conditions, StackedRandomGenerator(SEEDS), nfe)


def _class_student(teacher_dir, t0=999.0, wrap=None, **spec):
    teacher = load_teacher(teacher_dir)
    gen = _perturbed(make_generator(teacher, t0), 0)
    if wrap is not None:
        gen.denoiser = wrap(gen.denoiser)
    return _student(teacher, gen, ClassConditioner(num_classes=10, null_label=10), PixelSpace(), (1, 16, 16), **spec)


def test_digits_one_step(digits_like_teacher, tmp_path):
    student = _class_student(digits_like_teacher, timesteps=(999,))
    folder = student.export(tmp_path / "pipeline")
    spec, record = read_student_json(folder)
    assert spec == student.sampler and record["condition"] == "class" and record["shape"] == [1, 16, 16]
    torch.testing.assert_close(_evaluated(folder, [3, 7], 1), _expected(student, [3, 7]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_student_at_k_steps_of_its_grid(digits_like_teacher, tmp_path, steps):
    """LCM's boundary condition in the network, the 50-level skip grid, K of it."""
    from stepdistill.consistency import ConsistencyDenoiser

    grid = tuple(float(t) for t in range(999, 0, -20))
    student = _class_student(digits_like_teacher, wrap=lambda d: ConsistencyDenoiser(d, "lcm", timestep_scaling=10.0),
                             timesteps=grid, steps=4, boundary="lcm", timestep_scaling=10.0)
    folder = student.export(tmp_path / "pipeline")
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["original_inference_steps"] == 50
    torch.testing.assert_close(_evaluated(folder, [3, 7], steps), _expected(student, [3, 7], steps), atol=1e-5,
                               rtol=0)


def test_tcd_student(digits_like_teacher, tmp_path):
    """The one gap left: TCDScheduler's last step lands at training index 0 (sqrt(1 - abar_0) = 0.0064 of its eps
    estimate on this schedule), where the student returns x0; LCM's re-noising (gamma = 1) is far from both."""
    student = _class_student(digits_like_teacher, timesteps=(999, 749, 499, 249), gamma=0.0)
    folder = student.export(tmp_path / "pipeline")
    model = load_model(str(folder))
    assert model.sampler == "tcd_gamma_0" and model.native_nfe == 4
    got, expected = _evaluated(folder, [3, 7], 4), _expected(student, [3, 7])
    torch.testing.assert_close(got, expected, atol=0.015, rtol=0)
    renoised = _expected(_class_student(digits_like_teacher, timesteps=(999, 749, 499, 249), gamma=1.0), [3, 7])
    assert (renoised - expected).abs().mean() > 5 * (got - expected).abs().mean()


def test_routed_multi_student(digits_like_teacher, tmp_path):
    a = _class_student(digits_like_teacher, timesteps=(999,))
    b = copy.copy(a)
    b.generator = _perturbed(a.generator, 1)
    owner = [0] * 5 + [1] * 5
    routed = RoutedStudent(students=[a, b], route=lambda labels: torch.tensor([owner[int(c)] for c in labels]),
                           routing={"owner": owner}, name="msd")
    folder = routed.export(tmp_path / "pipeline")
    assert read_student_json(folder)[1]["students"] == 2
    labels = [2, 8]
    expected = torch.cat([routed.images(torch.tensor([c]), torch.Generator().manual_seed(s))
                          for c, s in zip(labels, SEEDS)])
    torch.testing.assert_close(_evaluated(folder, labels, 1), expected, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from stepdistill.tiny import build_tiny_text_to_image

    root = tmp_path_factory.mktemp("tiny")
    return lambda family: build_tiny_text_to_image(root / family, family=family)


def _text_student(folder, t0, *, lora=False, **spec):
    from stepdistill.prompt_encoders import prompt_encoder

    teacher = load_teacher(folder)
    gen = make_generator(teacher, t0, lora_rank=4 if lora else None)
    if lora:  # a trained adapter: LoRA's B starts at zero
        with torch.no_grad():
            for name, p in gen.net.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    else:
        gen = _perturbed(gen, 0)
    conditioner = TextConditioner(["a red square", "a photo of a cat"], prompt_encoder(teacher, (64, 64)))
    space = LatentSpace(teacher.load_component("vae"), 64)
    student = _student(teacher, gen.eval(), conditioner, space, **spec)
    student.lora_adapter = "generator" if lora else None
    return student


TEXT_CASES = {
    "sd-one-step": ("sd15", 999.0, dict(timesteps=(999,))),
    "sd-two-steps": ("sd15", 999.0, dict(timesteps=(999, 499))),
    "sdxl-one-step": ("sdxl", 999.0, dict(timesteps=(999,))),
    "sd3-one-step": ("sd3", 1.0, dict(timesteps=(1.0,))),
    "sd3-below-one": ("sd3", 0.75, dict(timesteps=(0.75,))),
    "flux-one-step": ("flux", 1.0, dict(timesteps=(1.0,))),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_to_image_exports(tiny, tmp_path, case):
    family, t0, spec = TEXT_CASES[case]
    student = _text_student(tiny(family), t0, **spec)
    folder = student.export(tmp_path / "pipeline")
    prompts = ["a photo of a cat", "a red square"]
    got = _evaluated(folder, prompts, student.nfe)
    expected = _expected(student, [1, 0])
    torch.testing.assert_close(got, expected.clamp(-1, 1), atol=6e-3, rtol=0)


def test_sd_one_step_export_is_scored_as_the_student(tiny, tmp_path):
    """The quick tier's text-to-image case: SD's one-step export (the Euler scheduler) with its first input
    sigma(t_0) z, and a two-step export from t_0 = 625 (LCMScheduler: the call scales the latents by 0.93)."""
    for timesteps in ((999,), (625, 250)):
        student = _text_student(tiny("sd15"), float(timesteps[0]), timesteps=timesteps)
        folder = student.export(tmp_path / f"pipeline{len(timesteps)}")
        got = _evaluated(folder, ["a photo of a cat", "a red square"], student.nfe)
        torch.testing.assert_close(got, _expected(student, [1, 0]).clamp(-1, 1), atol=6e-3, rtol=0)


@pytest.mark.slow
def test_lora_student(tiny, tmp_path):
    """A LoRA student's export (merged) is scored as the student; its lora/ folder carries the record too."""
    student = _text_student(tiny("sd15"), 999.0, lora=True, timesteps=(999, 499))
    folder = student.export(tmp_path / "pipeline")
    assert (folder / "lora" / STUDENT_JSON).is_file()
    got = _evaluated(folder, ["a photo of a cat", "a red square"], 2)
    torch.testing.assert_close(got, _expected(student, [1, 0]).clamp(-1, 1), atol=6e-3, rtol=0)


def test_super_resolution(sr_teacher, tmp_path):
    """`evaluate.py sr` runs the exported SR pipeline (found by its student.json) as the student samples."""
    from dataclasses import replace

    from stepdistill.conditioning import LRConditioner
    from stepdistill.degradations import Degradation
    from stepdistill.sr_benchmark import _sr_model, patches_conditioner, pipeline_fn

    teacher = load_teacher(sr_teacher)
    gen = _perturbed(make_generator(teacher, 749.0), 0)
    conditioner = LRConditioner([], Degradation(4), channels=3)
    student = _student(teacher, gen, conditioner, PixelSpace(), (3, 16, 16), timesteps=(749, 249))
    folder = student.export(tmp_path / "pipeline")
    assert _sr_model(str(folder))[0] == "pipeline"
    patches = patches_conditioner(16, Degradation(4), num_patches=2)
    fn, _ = pipeline_fn(folder, patches)
    labels = torch.arange(2)
    got = fn(labels, torch.Generator().manual_seed(0))
    expected = replace(student, conditioner=patches).images(labels, torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, expected.clamp(-1, 1), atol=1e-4, rtol=0)


def test_an_export_without_its_record_is_refused(digits_like_teacher, tmp_path):
    student = _class_student(digits_like_teacher, timesteps=(999,))
    folder = student.export(tmp_path / "pipeline")
    (folder / STUDENT_JSON).unlink()
    with pytest.raises(ValueError, match="without student.json"):
        load_model(str(folder))
