"""The step loop's guards under the conditions they guard, on a step function that only reports losses: the
divergence guard counts consecutive non-finite steps (and forgives a recovered one), and SIGINT (Ctrl-C) as
SIGTERM finishes the step in progress, checkpoints it and exits with 128 + the signal."""

import os
import signal

import pytest
import torch

from stepdistill.training import loop
from stepdistill.training.sections import TrainConfig


def _run(tmp_path, losses, *, max_nonfinite_steps=2, on_step=None):
    from accelerate import Accelerator

    def step_fn(draw, step):
        if on_step is not None:
            on_step(step)
        return {"loss": losses[step]}

    tmp_path.mkdir(parents=True, exist_ok=True)
    train = TrainConfig(max_steps=len(losses), time_limit_minutes=None, output_dir=str(tmp_path), checkpoint_every=1000,
                        sample_every=1000, batch_size=1, max_nonfinite_steps=max_nonfinite_steps)
    return loop.train_loop(Accelerator(cpu=True), train, name="t", start_step=0, start_time=0.0, step_fn=step_fn,
                           save_samples=lambda path: None)


def test_the_divergence_guard_counts_only_consecutive_non_finite_steps(tmp_path, fresh_accelerate_state):
    nan = float("nan")
    assert _run(tmp_path / "recovers", [1.0, nan, 1.0, nan, 1.0, float("inf"), 1.0]) == 7
    with pytest.raises(loop.DivergenceError, match="training diverged at step 4: non-finite loss for 2 consecutive"):
        _run(tmp_path / "diverges", [1.0, nan, 1.0, nan, nan, 1.0])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_checkpoints_it_and_exits_128_plus_the_signal(sig, tmp_path, fresh_accelerate_state):
    finished = []

    def on_step(step):
        if step == 1:
            os.kill(os.getpid(), sig)  # arrives mid-step, as a scheduler's or a user's would
        finished.append(step)

    previous = signal.getsignal(sig)
    with pytest.raises(loop.Preempted) as stop:
        _run(tmp_path, [1.0] * 5, on_step=on_step)
    assert stop.value.code == 128 + sig and finished == [0, 1]
    assert (tmp_path / "checkpoints" / "step_00000002").is_dir()
    assert signal.getsignal(sig) == previous  # the loop's handlers are gone once it stops


def test_the_trackers_get_the_project_the_run_name_and_every_setting_as_a_typed_hyperparameter(
        tmp_path, monkeypatch, fresh_accelerate_state):
    """`train.project` and `train.run_name` (null: the recipe's name, the output folder's), and the config as one
    dotted key per setting with numbers kept numbers: what TensorBoard's hparams and W&B compare runs on; the
    scalars go to the trackers at `log_every` (the losses with `training.meters`' rates, speed and memory)."""
    from accelerate import Accelerator

    calls, logged = [], []
    monkeypatch.setattr(Accelerator, "init_trackers", lambda self, project, config=None, init_kwargs=None:
                        calls.append((project, config, init_kwargs)))
    monkeypatch.setattr(Accelerator, "log", lambda self, values, step=None, **kw: logged.append((step, dict(values))))
    config = {"train": {"max_steps": 2, "seed": 0, "overwrite": False, "mixed_precision": "auto",
                        "time_limit_minutes": None}, "loss": {"betas": [0.0, 0.99]}}
    for project, run_name, out in ((None, None, tmp_path / "run_a"), ("distill", "sd15-try-3", tmp_path / "run_b")):
        out.mkdir()
        train = TrainConfig(max_steps=2, time_limit_minutes=None, output_dir=str(out), checkpoint_every=1000,
                            sample_every=1000, batch_size=4, log_every=2, project=project, run_name=run_name)
        loop.train_loop(Accelerator(cpu=True), train, name="dmd2", start_step=0, start_time=0.0,
                        step_fn=lambda draw, step: {"loss": 1.0 + step}, save_samples=lambda path: None, config=config)
    assert [(p, k["wandb"]["name"]) for p, _, k in calls] == [("dmd2", "run_a"), ("distill", "sd15-try-3")]
    assert calls[0][1] == {"train.max_steps": 2, "train.seed": 0, "train.overwrite": False,
                           "train.mixed_precision": "auto", "train.time_limit_minutes": "None",
                           "loss.betas": "[0.0, 0.99]"}
    step, values = logged[0]
    assert step == 2 and values["loss"] == 2.0 and values["peak_memory_mib"] > 0 and values["images_per_second"] > 0


def test_the_sample_grid_decodes_its_latents_a_few_at_a_time_and_only_where_it_is_written(tmp_path):
    """80 latents decoded by a 512-1024 px VAE in one call need tens of GiB: the grid decodes `DECODE_BATCH` at a
    time, in order, and a process that does not write the grid decodes nothing."""
    from types import SimpleNamespace

    from PIL import Image

    from stepdistill.training.final import DECODE_BATCH, save_samples

    decoded = []

    def decode(z):
        decoded.append(len(z))
        return z[:, :1].repeat(1, 3, 2, 2).clamp(-1, 1)  # 8x8 latents -> 16x16 RGB, each sample its own value

    sampled = torch.linspace(-1, 1, 80).view(80, 1, 1, 1).repeat(1, 4, 8, 8)
    student = SimpleNamespace(conditioner=SimpleNamespace(num_classes=10), device=torch.device("cpu"), members=(),
                              space=SimpleNamespace(decode=decode), sample=lambda labels, g: sampled[:len(labels)])
    save_samples(student, tmp_path / "none.png", write=False)
    assert decoded == [] and not (tmp_path / "none.png").exists()
    save_samples(student, tmp_path / "grid.png")
    assert sum(decoded) == 80 and max(decoded) <= DECODE_BATCH
    grid = torch.tensor(list(Image.open(tmp_path / "grid.png").convert("L").getdata()), dtype=torch.float32)
    grid = grid.view(8 * 17 + 1, 10 * 17 + 1)
    corners = grid[1::17, 1::17][:8, :10].flatten() / 255  # each cell's first pixel, row-major: sample i
    torch.testing.assert_close(corners, sampled[:, 0, 0, 0] * 0.5 + 0.5, atol=1 / 255, rtol=0)  # in order
