"""`Student` and `RoutedStudent`: the end product of every recipe samples, exports and keeps its weights."""

import json

import pytest
import torch

from stepdistill.conditioning import ClassConditioner
from stepdistill.denoiser import Denoiser
from stepdistill.latents import PixelSpace
from stepdistill.sampler_spec import SamplerSpec, strided as student_timesteps
from stepdistill.schedules import from_scheduler_config
from stepdistill.student import RoutedStudent, Student
from stepdistill.roles import Generator


def _student(unet, timesteps, seed=0, **kwargs):
    from diffusers import DDPMScheduler

    config = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config
    schedule, prediction_type = from_scheduler_config(config)
    torch.manual_seed(seed)
    net = type(unet).from_config(unet.config).eval()
    teacher = type("T", (), {"scheduler_config": dict(config), "source": "tiny", "root": ""})()
    generator = Generator(Denoiser(net, schedule, prediction_type), timesteps[0])
    sampler = SamplerSpec(timesteps=tuple(timesteps), input_scale=generator.input_scale,
                          **{k: kwargs.pop(k) for k in ("steps", "gamma") if k in kwargs})
    return Student(generator=generator, conditioner=ClassConditioner.for_embeddings(4), schedule=schedule,
                   sampler=sampler, space=PixelSpace(), shape=(1, 8, 8), teacher=teacher, **kwargs)


def test_fewer_steps_take_an_evenly_strided_subset_of_the_students_times():
    ts = torch.tensor([999.0, 749.0, 499.0, 249.0], dtype=torch.float64)
    assert student_timesteps(ts, None).tolist() == ts.tolist()
    assert student_timesteps(ts, 2).tolist() == [999.0, 499.0]
    assert student_timesteps(ts, 1).tolist() == [999.0]
    with pytest.raises(ValueError, match="1..4"):
        student_timesteps(ts, 5)


@torch.no_grad()
def test_one_step_sample_is_the_generator_on_scaled_noise(tiny_unet):
    student = _student(tiny_unet, [800])
    labels = torch.tensor([0, 2])
    x = student.sample(labels, torch.Generator().manual_seed(3))
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(x, student.generator(z, class_labels=labels))
    assert student.nfe == 1 and student.images(labels, torch.Generator().manual_seed(3)).abs().max() <= 1


def test_state_dict_carries_the_ema_weights_and_use_ema_applies_them(tiny_unet):
    from diffusers.training_utils import EMAModel

    student = _student(tiny_unet, [999])
    params = [p for p in student.generator.parameters() if p.requires_grad]
    ema = EMAModel(params, decay=0.5)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    raw = {k: v.clone() for k, v in student.generator.state_dict().items()}
    student.ema = ema
    state = student.state_dict()
    name = next(n for n, p in student.generator.named_parameters() if p.requires_grad)
    torch.testing.assert_close(state[name], raw[name] - 1.0)  # the EMA's copy, from before the change
    assert all(torch.equal(v, raw[k]) for k, v in student.generator.state_dict().items())  # unchanged
    student.use_ema()
    torch.testing.assert_close(student.generator.state_dict()[name], raw[name] - 1.0)


@torch.no_grad()
def test_routed_student_sends_each_label_to_its_student_and_exports_each(tiny_unet, tmp_path):
    a, b = _student(tiny_unet, [999], seed=0, name="a"), _student(tiny_unet, [999], seed=1, name="b")
    routed = RoutedStudent(students=[a, b], route=lambda labels: (labels >= 2).long(),
                           routing={"rule": "label >= 2 -> student_1"})
    labels = torch.tensor([0, 1])  # all to student a: the same draws as a alone
    torch.testing.assert_close(routed.sample(labels, torch.Generator().manual_seed(0)),
                               a.sample(labels, torch.Generator().manual_seed(0)))
    mixed = routed.sample(torch.tensor([3, 0]), torch.Generator().manual_seed(0))
    assert mixed.shape == (2, 1, 8, 8) and routed.nfe == 1
    state = routed.state_dict()
    assert {k.split(".")[1] for k in state} == {"0", "1"} and len(state) == 2 * len(a.state_dict())
    routed.load_state_dict(state)
    folder = routed.export(tmp_path / "routed")
    assert json.loads((folder / "routing.json").read_text())["students"] == ["student_0", "student_1"]
    assert (folder / "student_0" / "model_index.json").is_file() and (folder / "student_1" / "unet").is_dir()
