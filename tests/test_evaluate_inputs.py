"""What `eval/evaluate.py --model` is given: a checkpoint of any recipe evaluates as its recipe's student (the same
images as its export) or is refused naming the export to measure; every other kind of folder is named; a truncated
file is named in one line; output paths are refused before any image is generated or scored."""

from __future__ import annotations

import os
import json
import shutil
from pathlib import Path

import pytest
import torch

import quick
from registry import RECIPES
from stepdistill.evaluation import cli
from stepdistill.evaluation.generate import CheckpointModel, PipelineModel, StackedRandomGenerator, load_model


def _run(name, teacher, out):
    """One training step of `name` on its tiny teacher, with the export: a checkpoint and the pipeline beside it."""
    RECIPES[name].module().main(quick.config(name, teacher, out, *quick.SMALL.get(name, ()), "train.max_steps=1",
                                             "export.enabled=true"))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_teachers):
    root = tmp_path_factory.mktemp("runs")
    return {name: _run(name, tiny_teachers[RECIPES[name].tiny_teacher], root / name)
            for name in ("consistency_distill", "ect", "tadsr")}


def _checkpoint(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def _cut(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.fixture
def no_work(monkeypatch):
    """Generating or scoring anything fails the test: a refusal must come first."""
    import stepdistill.evaluation.generate as generate
    import stepdistill.sr_benchmark as sr_benchmark

    def work(*args, **kwargs):
        raise AssertionError("work started before the bad input was refused")

    monkeypatch.setattr(generate, "generate_images", work)
    monkeypatch.setattr(sr_benchmark, "evaluate_sr_models", work)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints of every kind of recipe


@pytest.mark.parametrize("name, steps", [("consistency_distill", 4), ("ect", 2)])
def test_consistency_checkpoints_evaluate_as_their_export(name, steps, runs, tmp_path):
    """The recipe's own student (its consistency function, its times, its default steps) with the checkpoint's
    weights: the same images as the exported pipeline at the same seeds, at its own steps and at one step; the
    run's config.yaml may carry a `resumes` record (not a setting)."""
    run = tmp_path / name
    shutil.copytree(runs[name], run)
    ckpt = _checkpoint(run)
    (ckpt / "config.yaml").unlink(missing_ok=True)  # read the run's config.yaml, with its resume record
    with open(run / "config.yaml", "a") as f:
        f.write(f"resumes:\n- step: 1\n  checkpoint: {ckpt}\n  changed: {{}}\n")
    model = load_model(str(ckpt))
    export = load_model(str(run / "pipeline"))
    assert isinstance(model, CheckpointModel) and isinstance(export, PipelineModel)
    assert (model.native_nfe, model.info["recipe"], model.info["ema"]) == (steps, name, True)
    labels, seeds = [3, 1, 4, 1, 5], list(range(5))
    for nfe in (steps, 1):
        mine = model(labels, StackedRandomGenerator(seeds), nfe)
        torch.testing.assert_close(mine, export(labels, StackedRandomGenerator(seeds), nfe), atol=1e-5, rtol=0)
        one = torch.cat([model(labels[i:i + 1], StackedRandomGenerator(seeds[i:i + 1]), nfe) for i in range(5)])
        torch.testing.assert_close(mine, one, atol=1e-5, rtol=0)
    cli.main(["gen", "--protocol", "digits", "--model", str(ckpt), "--num-images", "4", "--sets", "0",
              "--outdir", str(tmp_path / "eval")])
    assert (tmp_path / "eval" / f"{name}-multistep" / f"nfe{steps:03d}" / "set0" / "meta.json").is_file()


def test_every_checkpoint_and_export_records_how_its_student_samples(runs, tmp_path):
    """`student.json` in each checkpoint and export, the same spec; a checkpoint samples as its record says."""
    from stepdistill.sampler_spec import STUDENT_JSON, read_student_json

    for name, run in runs.items():
        spec, record = read_student_json(_checkpoint(run))
        assert read_student_json(run / "pipeline")[0] == spec and record["recipe"] == name, name
    run = tmp_path / "cd"
    shutil.copytree(runs["consistency_distill"], run)
    ckpt = _checkpoint(run)
    record = json.loads((ckpt / STUDENT_JSON).read_text())
    assert record["sampler"]["steps"] == 4
    record["sampler"]["steps"] = 2
    (ckpt / STUDENT_JSON).write_text(json.dumps(record))
    assert load_model(str(ckpt)).native_nfe == 2


def test_super_resolution_checkpoint_is_refused_naming_its_export(runs, tmp_path, capsys):
    ckpt = _checkpoint(runs["tadsr"])
    err = _refused(["gen", "--model", str(ckpt), "--nfe", "1", "--outdir", str(tmp_path)], capsys)
    assert "super-resolution (tadsr)" in err and f"evaluate.py sr --model {runs['tadsr'] / 'pipeline'}" in err
    err = _refused(["sr", "--model", str(ckpt), "--results", str(tmp_path / "r.json")], capsys)
    assert "training checkpoint of a tadsr run" in err and str(runs["tadsr"] / "pipeline") in err
    err = _refused(["gen", "--model", str(runs["tadsr"] / "pipeline"), "--outdir", str(tmp_path)], capsys)
    assert "is a super-resolution pipeline" in err
    err = _refused(["sr", "--model", str(runs["ect"] / "pipeline"), "--results", str(tmp_path / "r.json")], capsys)
    assert "not a super-resolution model" in err and "evaluate.py gen" in err


# ---------------------------------------------------------------------------------------------------------------
# other folders


def test_lora_export_is_named_as_such(tiny_cond_unet, tmp_path, capsys):
    from stepdistill.adapters import add_lora
    from stepdistill.export import export_lora

    add_lora(tiny_cond_unet, "student", rank=4, target_modules=["to_q", "to_v"])
    folder = export_lora(tmp_path / "pipeline" / "lora", tiny_cond_unet, "student", timesteps=[999, 499])
    (tmp_path / "pipeline" / "model_index.json").write_text("{}\n")  # the text-to-image export it sits in
    err = _refused(["gen", "--model", str(folder), "--nfe", "1", "--outdir", str(tmp_path / "out")], capsys)
    assert "is a LoRA export" in err and "teacher" not in err
    assert f"evaluate the pipeline exported with it, {tmp_path / 'pipeline'}" in err


def test_run_folder_and_checkpoints_folder_are_named(runs, tmp_path, capsys):
    run = runs["ect"]
    err = _refused(["gen", "--model", str(run), "--outdir", str(tmp_path)], capsys)
    assert "training run's output folder" in err and str(run / "pipeline") in err
    err = _refused(["gen", "--model", str(run / "checkpoints"), "--outdir", str(tmp_path)], capsys)
    assert "holds training checkpoints" in err
    err = _refused(["gen", "--model", str(_checkpoint(run) / "student.safetensors"), "--outdir", str(tmp_path)],
                   capsys)
    assert "is a weights file" in err


# ---------------------------------------------------------------------------------------------------------------
# truncated files


@pytest.mark.parametrize("which", ["student.safetensors", "model.safetensors", "config.yaml", "model_index.json",
                                   "unet weights"])
def test_a_truncated_file_is_named_in_one_line(which, runs, tmp_path, capsys, no_work):
    run = tmp_path / "run"
    shutil.copytree(runs["consistency_distill"], run)
    ckpt = _checkpoint(run)
    model = ckpt
    if which == "student.safetensors":
        cut = ckpt / "student.safetensors"
    elif which == "model.safetensors":  # a checkpoint without student.safetensors falls back to it
        (ckpt / "student.safetensors").unlink()
        cut = ckpt / "model.safetensors"
    elif which == "config.yaml":  # cut at a line end, the file still parses: its missing keys are noticed
        cut = ckpt / "config.yaml" if (ckpt / "config.yaml").is_file() else run / "config.yaml"
        lines = cut.read_text().splitlines(keepends=True)
        cut.write_text("".join(lines[: len(lines) // 2]))
    elif which == "model_index.json":
        cut, model = run / "pipeline" / "model_index.json", run / "pipeline"
    else:
        cut, model = run / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors", run / "pipeline"
    if which != "config.yaml":
        _cut(cut)
    err = _refused(["gen", "--model", str(model), "--outdir", str(tmp_path / "out")], capsys)
    assert err.startswith(f"error: {cut}: truncated"), err


# ---------------------------------------------------------------------------------------------------------------
# output paths, before any work


def test_sr_results_given_a_folder_is_refused_before_any_image(sr_teacher, tmp_path, capsys, no_work):
    (tmp_path / "results").mkdir()
    err = _refused(["sr", "--model", str(sr_teacher), "--nfe", "1", "--results", str(tmp_path / "results")], capsys)
    assert f"--results {tmp_path / 'results'} is a folder" in err


@pytest.mark.parametrize("option", ["--results", "--save-images"])
def test_sr_unwritable_outputs_are_refused_before_any_image(option, sr_teacher, tmp_path, capsys, no_work):
    (tmp_path / "a_file").write_text("not a folder\n")
    target = tmp_path / "a_file" / "out"
    argv = ["sr", "--model", str(sr_teacher), "--nfe", "1", option, str(target)]
    if option == "--save-images":
        argv += ["--results", str(tmp_path / "r.json")]
    err = _refused(argv, capsys)
    assert f"{option} {target}" in err and "is a file" in err
    err = _refused([*argv[:-2], option, "/proc/no/such/out"] if option == "--save-images"
                   else [*argv[:-1], "/proc/no/r.json"], capsys)
    assert "cannot write in /proc" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_sr_into_a_read_only_folder_is_refused_before_any_image(sr_teacher, tmp_path, capsys, no_work):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        err = _refused(["sr", "--model", str(sr_teacher), "--nfe", "1", "--results", str(folder / "r.json")], capsys)
    finally:
        folder.chmod(0o755)
    assert "cannot write in" in err


@pytest.mark.parametrize("command, option", [("gen", "--outdir"), ("all", "--results")])
def test_generation_outputs_are_refused_before_any_image(command, option, digits_like_teacher, tmp_path, capsys,
                                                         no_work):
    (tmp_path / "folder").mkdir()
    argv = ["--protocol", "digits", "--model", str(digits_like_teacher), "--nfe", "1", "--num-images", "4"]
    if option == "--outdir":
        argv += ["--outdir", "/proc/no/eval"]
    else:
        argv += ["--outdir", str(tmp_path / "eval"), "--results", str(tmp_path / "folder")]
    err = _refused([command, *argv], capsys)
    assert err.startswith(f"error: {option} ")
    assert not (tmp_path / "eval").exists()
