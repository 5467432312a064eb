"""FSDP through the recipes' own loop on 2 CPU processes over gloo (`accelerate launch --use_fsdp`): accelerate
shards GPU processes only, so the recipe shards its trained roles with torch's FSDP2 itself (`stepdistill.sharding`).
The sharded run trains, checkpoints, keeps its EMA, draws its sample grids, resumes and exports the weights an
unsharded run on the same global batch does."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

import quick
from launching import launch

STUDENT = "student.safetensors"
EXPORTED = "pipeline/unet/diffusion_pytorch_model.safetensors"


def _worst(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _args(teacher, out, *extra):
    return quick.overrides(teacher, out, "train.batch_size=8", "train.sample_every=2", "train.checkpoint_every=2",
                           "train.ema_decay=0.9", *extra)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dmd2_sharded_over_two_processes_trains_checkpoints_resumes_and_exports_as_one_process(digits_like_teacher,
                                                                                             tmp_path):
    """DMD2 with its GAN head (the generator's loss backpropagates through the frozen, sharded fake score's
    bottleneck, twice with the GAN balance), a two-step generator (backward simulation through the sharded network),
    the regression to the teacher's ODE pairs, EMA and a decaying rate: 3 steps sharded over 2 processes give one
    process's student, checkpoint (whole weights and Adam states, gathered on rank 0), sample grids and export; a
    sharded resume from step 2 trains the step-3 student of the uninterrupted run."""
    extra = ("train.max_steps=3", "optim.update_ratio=2", "optim.lr_schedule=linear",
             "model.generator_timesteps=[999,499]", "loss.regression_weight=0.5", "loss.regression_pairs=7",
             "loss.regression_nfe=3")
    log = launch("dmd2", 2, _args(digits_like_teacher, tmp_path / "fsdp", *extra), fsdp=True)
    assert "torch's FSDP2" in log  # the recipe said it shards, rather than silently training data-parallel
    launch("dmd2", 1, _args(digits_like_teacher, tmp_path / "one", *extra))
    fsdp, one = tmp_path / "fsdp", tmp_path / "one"
    ckpt = "checkpoints/step_00000002"
    assert not (fsdp / ckpt / "model.safetensors").exists()  # the sharded roles are not accelerate's models
    for f in (f"{ckpt}/{STUDENT}", f"checkpoints/step_00000003/{STUDENT}", EXPORTED):
        assert _worst(load_file(str(fsdp / f)), load_file(str(one / f))) < 1e-5, f  # float reduction order only
    # the trained weights moved (the bound above is not a bound on an untrained student)
    start = load_file(str(digits_like_teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    exported = load_file(str(fsdp / EXPORTED))
    assert max(float((exported[k] - v).abs().max()) for k, v in start.items()) > 1e-4
    # the checkpoint's whole weights and Adam states are the one process's
    state = torch.load(fsdp / ckpt / "custom_checkpoint_0.pkl", weights_only=True)
    gen = load_file(str(one / ckpt / "model.safetensors"))
    assert _worst({k: state["model"][f"0.{k}"] for k in gen}, gen) < 1e-5
    adam = torch.load(one / ckpt / "optimizer.bin", weights_only=True)["state"]
    mine = state["optimizers"][0]["state"]
    names = state["optimizers"][0]["param_groups"][0]["params"]  # the generator optimiser's weights, in order
    assert len(adam) == len(mine) == len(names) == len(gen)
    for i, name in enumerate(names):
        torch.testing.assert_close(mine[name]["exp_avg_sq"], adam[i]["exp_avg_sq"], rtol=1e-3, atol=1e-12)
    # EMA: its shadows are gathered whole, and they are the weights the student keeps
    ema = torch.load(fsdp / ckpt / "custom_checkpoint_1.pkl", weights_only=True)["shadow_params"]
    student = load_file(str(fsdp / ckpt / STUDENT))
    assert len(ema) == len(names)
    for shadow, name in zip(ema, names):
        torch.testing.assert_close(shadow, student[name.removeprefix("0.")], rtol=0, atol=0)
    assert any(float((student[k] - gen[k]).abs().max()) > 0 for k in gen)  # EMA weights, not the trained ones
    # every process sampled the grid (each pass gathers the sharded weights); rank 0 wrote it
    assert (fsdp / "samples" / "step_00000002.png").is_file()
    # resume: from step 2, sharded, to step 3
    again = tmp_path / "again"
    shutil.copytree(fsdp, again, ignore=shutil.ignore_patterns("step_00000003", "pipeline", "results.json"))
    launch("dmd2", 2, _args(digits_like_teacher, again, *extra, "resume=latest"), fsdp=True)
    assert _worst(load_file(str(again / "checkpoints/step_00000003" / STUDENT)),
                  load_file(str(fsdp / "checkpoints/step_00000003" / STUDENT))) < 1e-6
    assert _worst(load_file(str(again / EXPORTED)), exported) < 1e-6


@pytest.mark.slow
@pytest.mark.multiprocess
def test_sid_sharded_over_two_processes_trains_as_one_process(digits_like_teacher, tmp_path):
    """SiD (`training.implicit`: the generator's loss differentiates through the fake score and the teacher):
    2 steps sharded over 2 processes and in one process export the same student."""
    extra = ("train.max_steps=2",)
    launch("sid", 2, _args(digits_like_teacher, tmp_path / "fsdp", *extra), fsdp=True)
    launch("sid", 1, _args(digits_like_teacher, tmp_path / "one", *extra))
    a, b = load_file(str(tmp_path / "fsdp" / EXPORTED)), load_file(str(tmp_path / "one" / EXPORTED))
    assert _worst(a, b) < 1e-5
    start = load_file(str(digits_like_teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    assert max(float((a[k] - v).abs().max()) for k, v in start.items()) > 1e-5


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_recipe_whose_roles_are_not_sharded_refuses_fsdp_in_one_line(digits_like_teacher, tmp_path):
    """SwiftBrush trains LoRA adapters (FSDP would shard their frozen base): one clear error before training."""
    import os
    import subprocess
    import sys

    from launching import ROOT

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", "2", "--use_fsdp", str(ROOT / "recipes" / "swiftbrush.py"),
           *_args(digits_like_teacher, tmp_path / "sb", "train.max_steps=2")]
    run = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors and "data-parallel" in errors[0], run.stderr[-2000:]
    assert not (tmp_path / "sb" / "checkpoints").exists()
