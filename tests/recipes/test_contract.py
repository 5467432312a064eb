"""The contract every registered recipe keeps (`recipes/registry.py`): bad input stops before any step with one
line; resume is bit-identical; one process trains what two do; the export loads in stock diffusers without
stepdistill and gives the student's images, and so does the model card's own code, run as written; every preset
parses and trains a step on its tiny teacher. A recipe added to the registry is held to all of it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.numpy import load_file as load_numpy
from safetensors.torch import load_file

import quick
from launching import launch
from registry import RECIPES
from stepdistill.config import load_config
from stepdistill.training import cli
from without_stepdistill import CHILD, SEEDED, images_without_stepdistill

ROOT = Path(__file__).resolve().parents[2]
NAMES = sorted(RECIPES)
pytestmark = pytest.mark.parametrize("name", NAMES)


def _checkpoint(out: Path) -> Path:
    return sorted((out / "checkpoints").glob("step_*"))[-1]


def _student(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(_checkpoint(out) / "student.safetensors"))


def _run(name, teacher, out, *extra):
    info = RECIPES[name]
    return info.module().main(quick.config(name, teacher, out, *extra))


# -- bad input --------------------------------------------------------------------------------------------------

BAD = {
    "unknown key": ("loss.no_such_key=1", r"loss\.no_such_key"),
    "wrong type": ("train.max_steps=many", r"train\.max_steps"),
    "missing teacher": ("model.teacher={tmp}/no_teacher", r"no_teacher"),
    "missing resume": ("resume={tmp}/no_checkpoint", r"no_checkpoint"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_stops_before_any_step_with_one_line(name, case, tiny_teachers, tmp_path, capsys):
    info = RECIPES[name]
    override, match = BAD[case]
    out = tmp_path / "run"
    argv = quick.overrides(tiny_teachers[info.tiny_teacher], out, *quick.SMALL.get(name, ()),
                           override.format(tmp=tmp_path))
    with pytest.raises(SystemExit) as stop:
        cli(info.module(), info.config_class(), argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert re.search(match, err), err
    assert not (out / "checkpoints").exists() and not (out / "log_rank0.jsonl").exists()


# -- resume -----------------------------------------------------------------------------------------------------

def test_resume_is_bit_identical(name, tiny_teachers, tmp_path):
    """Stopped after its first step (a zero time limit), then resumed with the same settings: the student (EMA
    applied) and every optimiser end exactly as in the uninterrupted run."""
    teacher = tiny_teachers[RECIPES[name].tiny_teacher]
    run = ("train.max_steps=3", "train.checkpoint_every=3", "export.enabled=false")
    _run(name, teacher, tmp_path / "straight", *run)
    with warnings.catch_warnings():  # a decaying schedule warns that the limit cut it short
        warnings.simplefilter("ignore", UserWarning)
        _run(name, teacher, tmp_path / "resumed", *run, "train.time_limit_minutes=0")
    assert _checkpoint(tmp_path / "resumed").name == "step_00000001"
    _run(name, teacher, tmp_path / "resumed", *run, "resume=latest")
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["from_step"] for r in log if "resume" in r] == [1]
    a, b = _checkpoint(tmp_path / "straight"), _checkpoint(tmp_path / "resumed")
    assert a.name == b.name == "step_00000003"
    for file in sorted(p.name for p in a.iterdir() if p.suffix in (".safetensors", ".bin") and "random" not in p.name):
        if file.endswith(".safetensors"):
            x, y = load_file(str(a / file)), load_file(str(b / file))
        else:
            x, y = (torch.load(c / file, weights_only=True) for c in (a, b))
            x, y = _tensors(x), _tensors(y)
        assert x.keys() == y.keys(), file
        for k in x:
            assert torch.equal(x[k], y[k]), f"{file}: {k}"


def _tensors(obj, prefix="") -> dict[str, torch.Tensor]:
    """The tensors of a nested optimiser or scheduler state, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else []
    return {k: v for key, value in items for k, v in _tensors(value, f"{prefix}/{key}").items()}


# -- one process against two ------------------------------------------------------------------------------------

# Each recipe on the paths whose data are solved in shares and gathered: MLCM's teacher trajectories, iCT's
# global pairs from fresh weights. Dropout masks are each process's own draws: a network with dropout agrees with
# one process only in distribution, so none here.
TWO_PROCESS = {"consistency_distill": ("loss.segments=[4,2]", "loss.states=teacher", "loss.trajectories=6"),
               "ect": ("loss.schedule=ict", "model.boundary=lcm", "model.init=scratch", "model.dropout=0")}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_what_one_does(name, tiny_teachers, tmp_path):
    """The same global batch over one or two gloo processes: the same student after three steps, up to float
    reduction order (which Adam's first steps turn into +-lr on a few near-zero-gradient weights)."""
    teacher = tiny_teachers[RECIPES[name].tiny_teacher]
    extra = ("train.max_steps=3", "train.checkpoint_every=3", "export.enabled=false", *quick.SMALL.get(name, ()),
             *TWO_PROCESS.get(name, ()))
    for processes in (1, 2):
        launch(name, processes, quick.overrides(teacher, tmp_path / str(processes), *extra))
    _compare_students(_student(tmp_path / "1"), _student(tmp_path / "2"), teacher)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_accumulating_train_what_one_pass_does(name, tiny_teachers, tmp_path):
    """Two gloo processes, each accumulating 2 micro-batches of its share, against one process in one pass."""
    if name not in ("dmd2", "sid"):
        pytest.skip("one distribution-matching and one score-implicit recipe; every recipe accumulates in-process above")
    teacher = tiny_teachers[RECIPES[name].tiny_teacher]
    extra = ("train.max_steps=3", "train.checkpoint_every=3", "export.enabled=false", "train.batch_size=8",
             *ACCUMULATION.get(name, ()))
    launch(name, 1, quick.overrides(teacher, tmp_path / "one", *extra))
    launch(name, 2, quick.overrides(teacher, tmp_path / "two", *extra, "train.micro_batch_size=2"))
    _compare_students(_student(tmp_path / "one"), _student(tmp_path / "two"), teacher)


# -- gradient accumulation ---------------------------------------------------------------------------------------

# The GAN weight that follows the gradient norms needs the whole batch before its loss is formed (refused with
# accumulation); the fixed weight is the papers'.
ACCUMULATION = {"dmd2": ("loss.gan_balance=null",), "msd": ("loss.gan_balance=null",)}


def _compare_students(one: dict, two: dict, teacher) -> None:
    assert one.keys() == two.keys()
    base = {}
    for file in Path(teacher).glob("*/diffusion_pytorch_model.safetensors"):
        base.update(load_file(str(file)))
    pairs = [(k, base[k.split("denoiser.net.")[-1]]) for k in one if k.split("denoiser.net.")[-1] in base]
    assert pairs, "the student's weights name the teacher's"
    moved = torch.cat([(one[k] - v).abs().flatten() for k, v in pairs])
    diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    assert float(moved.mean()) > 1e-6, "three steps trained the student"
    assert float(diff.mean()) < 1e-3 * float(moved.mean()), (float(diff.mean()), float(moved.mean()))
    assert float((diff > 1e-5).float().mean()) < 2e-3


def test_accumulated_micro_batches_train_what_one_batch_does(name, tiny_teachers, tmp_path, monkeypatch):
    """`train.micro_batch_size=2` of a global batch of 16 (8 passes, 4 for each of MSD's students) against the batch
    in one pass: the same student after three steps, up to float summation order; no network pass of the
    accumulated run sees more than 8 samples (2, doubled by a guided pair, doubled again by a real/fake pair)."""
    from stepdistill import denoiser

    teacher = tiny_teachers[RECIPES[name].tiny_teacher]
    extra = ("train.max_steps=3", "train.checkpoint_every=3", "export.enabled=false", "train.batch_size=16",
             *ACCUMULATION.get(name, ()))
    _run(name, teacher, tmp_path / "whole", *extra)
    seen, training, call, step = [], [], denoiser.call_network, RECIPES[name].module().step

    def recorded(net, x, *args, **kwargs):
        if training:  # the steps' passes (not the final sample grid)
            seen.append(len(x))
        return call(net, x, *args, **kwargs)

    def in_training(*args, **kwargs):
        training.append(1)
        try:
            return step(*args, **kwargs)
        finally:
            training.pop()

    monkeypatch.setattr(denoiser, "call_network", recorded)
    monkeypatch.setattr(RECIPES[name].module(), "step", in_training)
    _run(name, teacher, tmp_path / "micro", *extra, "train.micro_batch_size=2")
    assert seen and max(seen) <= 8
    _compare_students(_student(tmp_path / "whole"), _student(tmp_path / "micro"), teacher)


# -- the export, without stepdistill ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tiny_teachers, tmp_path_factory):
    """name -> (run folder, student with the checkpoint's weights): two steps, then the export. Built once
    per recipe for the export and model-card tests."""
    runs = {}

    def get(name):
        if name not in runs:
            info = RECIPES[name]
            teacher = tiny_teachers[info.tiny_teacher]
            out = tmp_path_factory.mktemp(name) / "run"
            _run(name, teacher, out, "train.max_steps=2", "train.checkpoint_every=2", "export.enabled=true")
            run = info.module().setup(quick.config(name, teacher, out.parent / "fresh"))
            student = info.module().students(run)[0]
            student.load_state_dict(_student(out))
            runs[name] = (out, student)
        return runs[name]

    return get


def _low_resolution(student) -> torch.Tensor:
    """Two LR images in [-1, 1] at the student's input size (8-bit values, so a PNG holds them exactly)."""
    size = student.shape[-1] // student.conditioner.scale
    pixels = torch.randint(0, 256, (2, 3, size, size), generator=torch.Generator().manual_seed(5))
    return pixels.float() / 255 * 2 - 1


def _student_images(student, seed: int = 0, *, labels=(0, 1, 2), low=None) -> torch.Tensor:
    """The student's images in [0, 1] as stepdistill samples them: class labels, or LR images for SR."""
    g = torch.Generator().manual_seed(seed)
    if low is None:
        return student.images(torch.tensor(labels), g) * 0.5 + 0.5
    x = student.sample_with(student.conditioner.condition(low), len(low), g)
    return student.space.decode(x).clamp(-1, 1) * 0.5 + 0.5


def _is_sr(name) -> bool:
    return RECIPES[name].family == "super_resolution"


@pytest.mark.slow
def test_the_export_samples_the_students_images_without_stepdistill(name, exported, tmp_path):
    out, student = exported(name)
    if _is_sr(name):
        low = _low_resolution(student)
        lr_arg = f"image=torch.tensor({(low * 0.5 + 0.5).tolist()})"  # a tensor input is in [0, 1]
        images = images_without_stepdistill(out / "pipeline", tmp_path, f"{lr_arg}, {SEEDED}")
        expected = _student_images(student, low=low)
    else:
        images = images_without_stepdistill(out / "pipeline", tmp_path, f"class_labels=[7, 3, 0], {SEEDED}")
        expected = _student_images(student, labels=(7, 3, 0))
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_the_model_cards_code_runs_as_written_and_gives_the_students_images(name, exported, tmp_path):
    """The card's Usage block, unchanged, in the folder beside the pipeline (SR: with its `input.png`), in a process
    without stepdistill; its images are the student's, to 8-bit rounding."""
    out, student = exported(name)
    card = (out / "pipeline" / "README.md").read_text()
    code = re.search(r"## Usage\n\n```python\n(.*?)```", card, flags=re.S).group(1)
    assert "./pipeline" in code
    result = "image" if _is_sr(name) else "images"
    low = None
    if _is_sr(name):
        from PIL import Image

        low = _low_resolution(student)[:1]
        pixels = ((low[0] * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(out / "input.png")
    save = (f"\nimport numpy as np\nfrom safetensors.numpy import save_file as _save\n"
            f"_out = {result} if isinstance({result}, list) else [{result}]\n"
            f"_save({{'images': np.stack([np.asarray(i) for i in _out])}}, {str(tmp_path / 'card.safetensors')!r})\n")
    script = CHILD.split("import torch\nfrom diffusers import DiffusionPipeline")[0] + code + save
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "HF_MODULES_CACHE": str(tmp_path / "mods")}
    child = subprocess.run([sys.executable, "-I", "-c", script], cwd=out, env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    got = torch.from_numpy(load_numpy(str(tmp_path / "card.safetensors"))["images"]).float() / 255
    got = got.permute(0, 3, 1, 2) if got.ndim == 4 else got.unsqueeze(1)
    expected = _student_images(student, low=low)
    expected = (expected * 255).round() / 255
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert float((got - expected).abs().max()) <= 1 / 255 + 1e-6


# -- presets ----------------------------------------------------------------------------------------------------

def test_the_default_preset_is_the_recipes_defaults(name):
    from stepdistill.config import to_dict

    info = RECIPES[name]
    config = info.config_class()
    assert info.preset(info.default_preset).is_file(), f"recipes/configs/{name}/{info.default_preset}.yaml"
    cfg = load_config(config, ["--config", str(info.preset(info.default_preset))])
    assert to_dict(cfg) == to_dict(config()) and cfg.model.teacher == info.teacher


def tiny_for(preset: Path, tiny_teachers) -> tuple[str, list[str]]:
    """The tiny teacher a preset trains a step on, of its model family, and the overrides a CPU needs."""
    stem = preset.stem
    for key, tiny in (("sdxl", "tiny-sdxl"), ("sd3", "tiny-sd3"), ("flux", "tiny-flux")):
        if key in stem:
            return tiny, ["data.resolution=64"]
    if stem.startswith(("sd15", "sd21", "tiny")):
        return "tiny-sd", ["data.resolution=64"]
    if "imagenet" in stem or "edm" in stem:
        return str(tiny_teachers["digits"]), []
    return str(tiny_teachers[RECIPES[preset.parent.name].tiny_teacher]), []

# What a preset solves before its first step (teacher trajectories, regression pairs), cut to a few: the step itself
# runs as the preset says.
PRECOMPUTED = {"consistency_distill": ("loss.trajectories=8",),
               "dmd2": ("loss.regression_pairs=4", "loss.regression_nfe=2"),
               "msd": ("loss.regression_pairs=4", "loss.regression_nfe=2"),
               "tadsr": ("loss.regression_pairs=4", "loss.regression_nfe=2", "data.patches=32"),
               "yonos": ("data.patches=32",)}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Four unlabelled 64x64 RGB images: the real images a text-to-image preset's GAN or consistency loss reads."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def _text_data(name: str, teacher: str, images: Path) -> list[str]:
    if not teacher.startswith("tiny-"):
        return []
    prompts = [f"data.prompts={ROOT / 'assets' / 'prompts' / 'smoke.txt'}"]
    return prompts if RECIPES[name].family == "bootstrapping" else [*prompts, f"data.images={images}"]  # data-free


@pytest.mark.slow
def test_every_preset_parses_and_trains_a_step_on_its_tiny_teacher(name, tiny_teachers, image_folder, tmp_path,
                                                                   monkeypatch):
    """Each preset as written, on the tiny teacher of its family, with a batch a CPU holds, float32 and its
    precomputation cut short; a zero time limit stops it after its first step, whatever its schedule."""
    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    info = RECIPES[name]
    for preset in info.presets():
        teacher, extra = tiny_for(preset, tiny_teachers)
        students = getattr(load_config(info.config_class(), ["--config", str(preset)]).model, "students", 1)
        cfg = load_config(info.config_class(), [
            "--config", str(preset), f"model.teacher={teacher}", f"train.output_dir={tmp_path / preset.stem}",
            f"train.batch_size={2 * students}", "train.time_limit_minutes=0", "train.sample_every=100000", "train.mixed_precision=no",
            "eval.enabled=false", "export.enabled=false", *PRECOMPUTED.get(name, ()), *_text_data(name, teacher, image_folder),
            *extra])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the limit cuts a decaying schedule short
            info.module().main(cfg)
        assert (tmp_path / preset.stem / "checkpoints" / "step_00000001" / "student.safetensors").is_file(), preset
