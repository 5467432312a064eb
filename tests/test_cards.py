"""Every export kind's model card, executed as written: the card's own code (loading, scheduler, first input, call)
gives the image its `Student` samples for the card's condition and seed. A card is the first thing a user runs;
a test that builds its own call would not see a card that says something else."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from test_evaluate_exports import _class_student, _perturbed, _student, _text_student, tiny  # noqa: F401
from stepdistill.evaluation.generate import StackedRandomGenerator, load_model, to_uint8


@pytest.fixture(scope="module", autouse=True)
def _modules_cache(tmp_path_factory):
    """diffusers copies a travelling pipeline's file into HF_MODULES_CACHE before importing it: keep it in tmp."""
    import diffusers.utils.dynamic_modules_utils as dynamic

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path_factory.mktemp("hf_modules")))
        yield


def card_code(folder: Path) -> str:
    text = (folder / "README.md").read_text()
    assert text.count("```python") == 1, "a card holds one code block"
    return text.split("```python\n", 1)[1].split("```", 1)[0]


@torch.no_grad()
def run_card(folder: Path, *, cwd: Path, base: Path | None = None) -> np.ndarray:
    """The card's code run from `cwd` (its paths are relative to where the user saved the folder), BASE_MODEL read as
    `base`; its images as uint8 NHWC."""
    code = card_code(folder)
    if base is not None:
        code = code.replace("BASE_MODEL", repr(str(base)))
    before = os.getcwd()
    os.chdir(cwd)
    try:
        scope: dict = {}
        exec(compile(code, str(folder / "README.md"), "exec"), scope)
    finally:
        os.chdir(before)
    images = scope["image"] if "image" in scope else scope["images"]
    images = images if isinstance(images, list) else [images]
    return np.stack([np.asarray(im) for im in images]).reshape(len(images), *np.asarray(images[0]).shape[:2], -1)


def student_image(student, label: int, seed: int = 0, steps=None) -> np.ndarray:
    return to_uint8(student.images(torch.tensor([label]), torch.Generator().manual_seed(seed), steps).clamp(-1, 1))


def assert_same_image(card: np.ndarray, student: np.ndarray, levels: int = 2) -> None:
    diff = np.abs(card.astype(int) - student.astype(int))
    assert diff.max() <= levels, f"card and student differ by up to {diff.max()} levels ({(diff > levels).mean():.1%})"


CAT = 1  # `_text_student`'s prompts: "a red square", "a photo of a cat" (every text card's prompt)


@pytest.mark.parametrize("timesteps", [(999,), (999, 499), (625, 250)], ids=["one-step", "two-step", "from-625"])
def test_sd_cards(tiny, tmp_path, timesteps):
    student = _text_student(tiny("sd15"), float(timesteps[0]), timesteps=timesteps)
    folder = student.export(tmp_path / "pipeline")
    assert_same_image(run_card(folder, cwd=tmp_path), student_image(student, CAT))


def test_a_w_conditioned_lcm_card_runs_at_the_students_guidance(tiny, tmp_path):
    """diffusers embeds w = guidance_scale - 1 for a UNet with `time_cond_proj_dim`: the card passes w + 1."""
    from diffusers import UNet2DConditionModel

    from stepdistill.consistency import GuidanceConditioned
    from stepdistill.roles import Generator

    base = _text_student(tiny("sd15"), 999.0, timesteps=(999, 499))
    teacher = base.teacher
    net = UNet2DConditionModel.from_config({**teacher.net.config, "time_cond_proj_dim": 32})
    net.load_state_dict(base.generator.net.state_dict(), strict=False)
    with torch.no_grad():  # a trained guidance projection: w changes the image
        net.time_embedding.cond_proj.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    gen = Generator(GuidanceConditioned(teacher.denoiser(net=net.eval()), 32, w=3.0), 999.0)
    student = _student(teacher, gen, base.conditioner, base.space, timesteps=(999, 499))
    folder = student.export(tmp_path / "pipeline")
    assert "guidance_scale=4.0" in card_code(folder)
    assert_same_image(run_card(folder, cwd=tmp_path), student_image(student, CAT))
    # eval/evaluate.py makes the same call (student.json's `call`)
    scored = load_model(str(folder))(["a photo of a cat"], StackedRandomGenerator([0]), 2)
    own = student.images(torch.tensor([CAT]), torch.Generator().manual_seed(0)).clamp(-1, 1)
    torch.testing.assert_close(scored, own, atol=6e-3, rtol=0)


@pytest.mark.parametrize("timesteps", [(999, 749, 499, 249), (625, 250)], ids=["dmd2-4step", "from-625"])
def test_lora_cards_the_merged_pipeline_and_the_lora_on_its_base(tiny, tmp_path, timesteps):
    """A multistep LoRA student (DMD2's four times; one from 625, where sigma(t_0) = 0.93): the merged export's card
    and the LoRA folder's card (the stock LCMScheduler would run 999, 759, 499, 259 for DMD2's times and pass z
    unscaled; the card passes the student's times and its first input sigma(t_0) z)."""
    teacher_folder = tiny("sd15")
    student = _text_student(teacher_folder, float(timesteps[0]), lora=True, timesteps=timesteps)
    folder = student.export(tmp_path / "pipeline")
    expected = student_image(student, CAT)
    assert_same_image(run_card(folder, cwd=tmp_path), expected)
    lora = card_code(folder / "lora")
    assert f"timesteps={list(timesteps)}" in lora and "latents=latents" in lora
    assert_same_image(run_card(folder / "lora", cwd=folder, base=teacher_folder), expected)


@pytest.mark.parametrize("kind", ["one-step", "consistency-4", "tcd"])
def test_class_conditional_cards(digits_like_teacher, tmp_path, kind):
    """The travelling pipeline's card: digits one-step, a consistency student at 4 of its 50-level grid, and TCD
    (whose last step lands at index 0, 0.0064 of an eps estimate from the student's x0: `test_tcd_student`)."""
    from stepdistill.consistency import ConsistencyDenoiser

    grid = tuple(float(t) for t in range(999, 0, -20))
    student = {
        "one-step": lambda: _class_student(digits_like_teacher, timesteps=(999,)),
        "consistency-4": lambda: _class_student(
            digits_like_teacher, wrap=lambda d: ConsistencyDenoiser(d, "lcm", timestep_scaling=10.0), timesteps=grid,
            steps=4, boundary="lcm", timestep_scaling=10.0),
        "tcd": lambda: _class_student(digits_like_teacher, timesteps=(999, 749, 499, 249), gamma=0.0),
    }[kind]()
    folder = student.export(tmp_path / "pipeline")
    card = run_card(folder, cwd=tmp_path)
    labels = [int(c) for c in card_code(folder).split("class_labels=[", 1)[1].split("]", 1)[0].split(",")]
    expected = to_uint8(student.images(torch.tensor(labels), torch.Generator().manual_seed(0)).clamp(-1, 1))
    assert_same_image(card, expected, levels=3 if kind == "tcd" else 2)


@pytest.mark.slow
@pytest.mark.parametrize("family,t0", [("sdxl", 999.0), ("sd3", 1.0), ("sd3", 0.75), ("flux", 1.0)])
def test_other_family_cards(tiny, tmp_path, family, t0):
    student = _text_student(tiny(family), t0, timesteps=(t0,))
    folder = student.export(tmp_path / "pipeline")
    assert_same_image(run_card(folder, cwd=tmp_path), student_image(student, CAT))


def test_routed_multi_student_card(digits_like_teacher, tmp_path):
    """MSD's routed pipeline: the card's labels go to their owners, each student sampling its own."""
    import copy

    from stepdistill.student import RoutedStudent

    a = _class_student(digits_like_teacher, timesteps=(999,))
    b = copy.copy(a)
    b.generator = _perturbed(a.generator, 1)
    owner = [0, 1] * 5
    routed = RoutedStudent(students=[a, b], route=lambda labels: torch.tensor([owner[int(c)] for c in labels]),
                           routing={"owner": owner}, name="msd")
    folder = routed.export(tmp_path / "pipeline")
    labels = [int(c) for c in card_code(folder).split("class_labels=[", 1)[1].split("]", 1)[0].split(",")]
    assert len({owner[c] for c in labels}) == 2  # the card's call reaches both students
    expected = to_uint8(routed.images(torch.tensor(labels), torch.Generator().manual_seed(0)).clamp(-1, 1))
    assert_same_image(run_card(folder, cwd=tmp_path), expected)


def test_super_resolution_card(sr_teacher, tmp_path):
    """The SR card opens `input.png` and upsamples it: the student's image for that low-resolution input."""
    from PIL import Image

    from stepdistill.conditioning import LRConditioner
    from stepdistill.degradations import Degradation
    from stepdistill.latents import PixelSpace
    from stepdistill.roles import make_generator
    from stepdistill.teachers import load_teacher

    teacher = load_teacher(sr_teacher)
    low = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(5))
    Image.fromarray(to_uint8(low[None] * 2 - 1)[0]).save(tmp_path / "input.png")
    saved = torch.from_numpy(np.asarray(Image.open(tmp_path / "input.png"))).permute(2, 0, 1).float() / 127.5 - 1
    conditioner = LRConditioner([{"images": torch.zeros(3, 16, 16), "lr": saved}], Degradation(4), channels=3)
    gen = _perturbed(make_generator(teacher, 749.0), 0)
    student = _student(teacher, gen, conditioner, PixelSpace(), (3, 16, 16), timesteps=(749, 249))
    folder = student.export(tmp_path / "pipeline")
    assert_same_image(run_card(folder, cwd=tmp_path), student_image(student, 0))
