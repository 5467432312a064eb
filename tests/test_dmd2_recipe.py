"""The DMD2 recipe end to end on a tiny class-conditional teacher: resume, multi-process, backward
simulation. (Quality on the real digits teacher is measured by the recipe's own run, not here.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
from launching import launch  # noqa: E402
from without_stepdistill import SEEDED, images_without_stepdistill  # noqa: E402
import dmd2  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402


@pytest.fixture(scope="module")
def teacher_dir(digits_like_teacher):
    return digits_like_teacher


def _overrides(teacher_dir, out, *extra):
    return quick.overrides(teacher_dir, out, "train.batch_size=8", "optim.update_ratio=2", *extra)


def _cfg(*overrides):
    return apply_overrides(dmd2.DMD2Config(), list(overrides))


def _generator_weights(out):
    ckpt = sorted((Path(out) / "checkpoints").glob("step_*"))[-1]
    return load_file(str(ckpt / "model.safetensors"))  # the first prepared model: the generator


def test_resume_continues_at_the_saved_step_with_identical_state(teacher_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    dmd2.main(_cfg(*_overrides(teacher_dir, straight, "train.max_steps=4", "train.checkpoint_every=2")))
    # Interrupted after its first step (a zero time limit), then resumed with the same config: the
    # learning-rate decay, the generator's every-other-step updates and the draws all continue.
    with pytest.warns(UserWarning, match="limit stopped training at step 1 of 4"):
        dmd2.main(_cfg(*_overrides(teacher_dir, resumed, "train.max_steps=4", "train.checkpoint_every=2",
                                   "train.time_limit_minutes=0")))
    first = [json.loads(line) for line in (resumed / "log_rank0.jsonl").read_text().splitlines()]
    dmd2.main(_cfg(*_overrides(teacher_dir, resumed, "train.max_steps=4", "train.checkpoint_every=2",
                               "resume=latest")))
    log = [json.loads(line) for line in (resumed / "log_rank0.jsonl").read_text().splitlines()]
    # continued at step 1, the resume marked in the log
    assert [r.get("step") for r in log] == [0, None, 1, 2, 3] and len(first) == 1
    assert log[1]["from_step"] == 1 and log[1]["resume"].endswith("step_00000001")
    a, b = _generator_weights(straight), _generator_weights(resumed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    opt_a = torch.load(straight / "checkpoints" / "step_00000004" / "optimizer.bin", weights_only=True)
    opt_b = torch.load(resumed / "checkpoints" / "step_00000004" / "optimizer.bin", weights_only=True)
    for sa, sb in zip(opt_a["state"].values(), opt_b["state"].values()):
        torch.testing.assert_close(sa["exp_avg"], sb["exp_avg"], rtol=0, atol=0)
        torch.testing.assert_close(sa["exp_avg_sq"], sb["exp_avg_sq"], rtol=0, atol=0)


@pytest.mark.slow
def test_exported_student_reproduces_the_trained_generator_without_stepdistill(teacher_dir, tmp_path):
    out = tmp_path / "run"
    dmd2.main(_cfg(*_overrides(teacher_dir, out, "train.max_steps=2", "train.checkpoint_every=2")))
    images = images_without_stepdistill(out / "pipeline", tmp_path, "class_labels=[3, 7], " + SEEDED)
    from stepdistill.roles import make_generator
    from stepdistill.teachers import load_teacher

    gen = make_generator(load_teacher(teacher_dir))
    gen.net.load_state_dict({k.removeprefix("denoiser.net."): v for k, v in _generator_weights(out).items()})
    with torch.no_grad():
        z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
        expected = gen(z, class_labels=torch.tensor([3, 7])).clamp(-1, 1) * 0.5 + 0.5
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)


def test_regression_pairs_are_the_teachers_ode_solutions_and_are_reused(teacher_dir, tmp_path):
    """DMD's regression data: x is the teacher's ODE solution from z; the file is read back (not
    solved again) when the settings match, and solved again when they change."""
    from accelerate import Accelerator
    from stepdistill.conditioning import ClassConditioner
    from stepdistill.data.ode_pairs import make_ode_pairs
    from stepdistill.guidance import CFGDenoiser
    from stepdistill.samplers import sample
    from stepdistill.teachers import load_teacher

    teacher = load_teacher(teacher_dir)
    den, cond = CFGDenoiser(teacher.denoiser(), 1.0), ClassConditioner.for_embeddings(11)
    cache = tmp_path / "pairs.safetensors"
    kw = dict(sampler="ddim", nfe=4, seed=3, accelerator=Accelerator(cpu=True), cache=cache)
    pairs = make_ode_pairs(den, teacher.schedule, cond, (1, 16, 16), n=5, **kw)
    with torch.no_grad():
        x = sample(lambda x_t, t: den(x_t, t, class_labels=pairs.labels), teacher.schedule,
                   pairs.z * teacher.schedule.prior_std(), sampler="ddim", steps=4)
    torch.testing.assert_close(pairs.x, x, rtol=0, atol=1e-6)
    stamp = cache.stat().st_mtime_ns
    again = make_ode_pairs(den, teacher.schedule, cond, (1, 16, 16), n=5, **kw)
    assert cache.stat().st_mtime_ns == stamp and torch.equal(again.x, pairs.x)
    more = make_ode_pairs(den, teacher.schedule, cond, (1, 16, 16), n=6, **kw)
    assert len(more) == 6 and torch.equal(more.z[:5], pairs.z)


def test_bad_input_fails_before_any_step(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="regression_sampler"):
        _cfg(*_overrides(teacher_dir, tmp_path / "x", "loss.regression_sampler=euler_a"))
    with pytest.raises(ValueError, match="regression_pairs"):
        dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path / "x", "loss.regression_weight=1",
                                   "loss.regression_pairs=0")))
    with pytest.raises(ValueError, match="generator_timesteps"):
        dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path / "x", "model.generator_timesteps=[499,999]")))
    with pytest.raises(FileNotFoundError, match="incomplete"):
        dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path / "y", f"resume={tmp_path / 'nothing'}")))
    with pytest.raises(ValueError, match="gan_start_step"):
        dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path / "x", "loss.gan_start_step=10", "train.max_steps=10")))
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_the_gan_terms_join_distribution_matching_at_gan_start_step(teacher_dir, tmp_path):
    """Staged training (MSD's DM, then DM + GAN): no discriminator step and no generator GAN loss before the
    start step, both from it on (the generator steps at 0 and 2, update_ratio 2)."""
    dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path, "train.max_steps=4", "loss.gan_start_step=2",
                               "export.enabled=false")))
    log = [json.loads(line) for line in (tmp_path / "log_rank0.jsonl").read_text().splitlines()]
    assert [("loss_d" in r, "loss_g_gan" in r, "loss_dm" in r) for r in log] == [
        (False, False, True), (False, False, False), (True, True, True), (True, False, False)]


def test_the_log_holds_each_optimisers_rate_and_gradient_norm_the_speed_and_the_memory(teacher_dir, tmp_path):
    """`train.log_every=2`: every second row also logs the learning rates and gradient norms (before clipping) of
    the generator and the fake score, images a second and the peak memory (`training.meters`)."""
    dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path, "train.max_steps=4", "train.log_every=2",
                               "optim.lr_schedule=constant", "optim.lr_generator=3e-5", "optim.lr_fake=7e-5",
                               "optim.grad_clip=1e-9", "export.enabled=false")))
    log = [json.loads(line) for line in (tmp_path / "log_rank0.jsonl").read_text().splitlines()]
    assert ["lr_generator" in r for r in log] == [False, True, False, True]
    for row in log[1::2]:
        assert row["lr_generator"] == pytest.approx(3e-5) and row["lr_fake_score"] == pytest.approx(7e-5)
        assert 1e-6 < row["grad_norm_generator"] < 1e3 and 1e-6 < row["grad_norm_fake_score"] < 1e3  # unclipped
        assert row["images_per_second"] > 0 and row["peak_memory_mib"] > 100
    assert log[1]["grad_norm_fake_score"] != log[3]["grad_norm_fake_score"]  # each log reads its own step's


def _launch(teacher_dir, out, processes, *extra):
    launch("dmd2", processes, _overrides(teacher_dir, out, *extra))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_with_the_same_global_batch(teacher_dir, tmp_path):
    """Multistep generator (backward simulation): the step index is the same on both ranks, and
    two processes x 4 samples train the same weights as one process x 8 samples. The learning rates
    decay linearly, so a schedule stepped once per process (accelerate's default) would differ. The
    regression loss's teacher ODE pairs are solved half on each process and gathered."""
    extra = ("train.max_steps=3", "train.checkpoint_every=3", "model.generator_timesteps=[999,499]",
             "optim.lr_schedule=linear", "loss.regression_weight=0.5", "loss.regression_pairs=7",
             "loss.regression_nfe=3")
    _launch(teacher_dir, tmp_path / "one", 1, *extra)
    _launch(teacher_dir, tmp_path / "two", 2, *extra)
    logs = [[json.loads(l) for l in (tmp_path / "two" / f"log_rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    ks = [[r.get("backsim_step") for r in log] for log in logs]
    assert ks[0] == ks[1] and any(k is not None for k in ks[0])
    one, two = _generator_weights(tmp_path / "one"), _generator_weights(tmp_path / "two")
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-5, worst  # float reduction order only
    pairs = [load_file(str(tmp_path / run / "cache" / "ode_pairs.safetensors")) for run in ("one", "two")]
    assert len(pairs[0]["labels"]) == 7 and all("loss_reg" in r for r in logs[0] if "loss_dm" in r)
    for k in pairs[0]:
        torch.testing.assert_close(pairs[0][k], pairs[1][k], rtol=0, atol=1e-6)


def test_tiny_text_to_image_preset_trains_and_exports(tmp_path, monkeypatch):
    """The text path (VAE latents, CLIP embeddings, CFG on the real score) trains 2 steps, and the
    exported folder loads in stock diffusers and generates in one step."""
    from diffusers import DiffusionPipeline, EulerDiscreteScheduler
    from stepdistill.config import load_config

    from stepdistill.local_paths import files_with_local_paths

    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    argv = ["--config", "recipes/configs/dmd2/tiny_t2i.yaml", f"train.output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", [str(ROOT / "recipes" / "dmd2.py"), *argv])
    dmd2.main(load_config(dmd2.DMD2Config, argv))
    # the card quotes the command without this machine's paths (an upload would publish them)
    assert "recipes/dmd2.py --config recipes/configs/dmd2/tiny_t2i.yaml train.output_dir=<local>/run" in \
        (tmp_path / "run" / "pipeline" / "README.md").read_text()
    assert files_with_local_paths(tmp_path / "run" / "pipeline") == {}
    log = [json.loads(line) for line in (tmp_path / "run" / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1] and "loss_dm" in log[0]
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)  # one step: exact at any t_0 (stepdistill.export)
    image = pipe("a red square", num_inference_steps=1, guidance_scale=0.0, output_type="pt",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    assert (tmp_path / "run" / "samples" / "final.png").is_file()


def test_final_evaluation_runs_the_student_in_float32(teacher_dir, tmp_path, monkeypatch, fresh_accelerate_state):
    """Trained under bf16 autocast, the student that `finish` samples, measures and exports computes in
    float32 (the weights a user loads): G(z) equals its denoiser called directly, outside any autocast."""
    from stepdistill.training import final as final_module

    seen = {}
    monkeypatch.setattr(final_module, "save_samples", lambda student, path: seen.setdefault("s", student))
    dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path, "train.max_steps=1", "train.mixed_precision=bf16",
                               "loss.gan=false", "export.enabled=false")))
    gen = seen["s"].generator
    z, cond = torch.randn(2, 1, 16, 16), {"class_labels": torch.tensor([1, 2])}
    with torch.no_grad():
        torch.testing.assert_close(gen(z, **cond), gen.denoiser(z * gen.input_scale, gen.t_init, **cond),
                                   rtol=0, atol=0)


def test_checkpoints_carry_the_students_ema_weights_which_evaluation_loads(teacher_dir, tmp_path):
    """A checkpoint's `student.safetensors` holds the weights the run evaluates and exports (EMA applied):
    equal to the exported unet's, and what `CheckpointModel` loads, with no guessing among accelerate's files."""
    from stepdistill.evaluation.generate import CheckpointModel

    dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path, "train.max_steps=2", "train.ema_decay=0.5", "loss.gan=false")))
    ckpt = tmp_path / "checkpoints" / "step_00000002"
    student = load_file(str(ckpt / "student.safetensors"))
    exported = load_file(str(tmp_path / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"))
    trained = load_file(str(ckpt / "model.safetensors"))  # the raw generator: differs from its EMA
    prefix = "denoiser.net."
    assert {k[len(prefix):] for k in student} == set(exported)
    assert all(torch.equal(student[prefix + k], v) for k, v in exported.items())
    assert any(not torch.equal(student[k], trained[k]) for k in student)
    assert "2 of 2 steps in" in (tmp_path / "pipeline" / "README.md").read_text()  # the card says how it trained
    model = CheckpointModel(ckpt)
    assert model.info["ema"] is True
    assert all(torch.equal(v, student[k]) for k, v in model.generator.state_dict().items())


def test_a_diverging_run_stops_keeps_its_last_good_checkpoint_and_exports_nothing(teacher_dir, tmp_path):
    """At an absurd learning rate (reached after a warm-up, so the first checkpoints are good) the losses
    turn non-finite: the run raises (non-zero exit) naming the step and the last good checkpoint, writes no
    non-finite checkpoint, and neither evaluates nor exports."""
    from stepdistill.training.loop import DivergenceError

    bad = _overrides(teacher_dir, tmp_path, "train.max_steps=60", "train.checkpoint_every=1", "loss.gan=false",
                     "optim.lr_generator=1e30", "optim.lr_fake=1e30", "optim.update_ratio=1",
                     "optim.warmup_steps=20", "train.keep_checkpoints=0")
    with pytest.raises(DivergenceError, match=r"diverged at step \d+: non-finite .*step_\d{8}.*Lower the learning"):
        dmd2.main(_cfg(*bad))
    assert not (tmp_path / "pipeline").exists()
    checkpoints = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert checkpoints  # the good ones are kept
    for ckpt in checkpoints:
        weights = load_file(str(ckpt / "student.safetensors"))
        assert all(torch.isfinite(v).all() for v in weights.values()), ckpt


def test_a_reused_output_folder_is_refused_unless_resumed_or_overwritten(teacher_dir, tmp_path):
    """A new run into a folder holding another run's checkpoints would mix the two: refused, with the two
    ways on; `train.overwrite=true` starts over (old checkpoints and logs deleted). A half-written
    checkpoint (`*.tmp`, a run killed while saving) is removed at start and never resumed from."""
    args = _overrides(teacher_dir, tmp_path, "train.max_steps=1", "loss.gan=false", "export.enabled=false")
    dmd2.main(_cfg(*args))
    with pytest.raises(FileExistsError, match=r"holds another run's checkpoints.*resume=latest.*train.overwrite=true"):
        dmd2.setup(_cfg(*args))
    (tmp_path / "checkpoints" / "step_00000009.tmp").mkdir()
    dmd2.main(_cfg(*args, "train.overwrite=true"))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]
    log = [json.loads(line) for line in (tmp_path / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0]  # the earlier run's lines are gone


CLI_ERRORS = [
    ("train.batch_size=0", "train.batch_size=0 must be positive"),
    ("train.checkpoint_every=0", "train.checkpoint_every=0 must be >= 1"),
    ("optim.update_ratio=0", "optim.update_ratio=0 must be >= 1"),
    ("model.teacher=/no/such/folder", "not a local folder"),
    ("train.max_stepz=3", "train.max_stepz"),
    ("eval.results=/proc/no/results.json", "eval.results: cannot create /proc/no"),
    ("optim.lr_generator=-1e-4", "optim.lr_generator=-0.0001 must be > 0"),
    ("train.max_steps=50", "optim.warmup_steps=100 must be shorter than train.max_steps=50"),
    ("train.max_steps=0", "train.max_steps=0 must be >= 1"),
    ("optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5] must be two values in [0, 1)"),
    ("train.max_nonfinite_steps=0", "train.max_nonfinite_steps=0 must be >= 1"),
    ("loss.max_step=1.5", "loss.max_step=1.5 must satisfy 0 <= min_step < max_step <= 1"),
]


@pytest.mark.parametrize("override,match", CLI_ERRORS)
def test_command_line_errors_are_one_line_and_exit_2(teacher_dir, tmp_path, override, match, capsys):
    """The recipe's command line (`stepdistill.training.cli`, what `python recipes/dmd2.py ...` runs) prints one
    line, `error: ...`, and exits 2 before any step."""
    from stepdistill.training import cli

    with pytest.raises(SystemExit) as stop:
        cli(dmd2, dmd2.DMD2Config, [f"model.teacher={teacher_dir}", f"train.output_dir={tmp_path / 'out'}", override])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and match in err, err
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_the_script_itself_prints_one_line_and_exits_2(teacher_dir, tmp_path):
    """`python recipes/dmd2.py ...` as a user runs it: the same one line (no traceback), exit status 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "recipes" / "dmd2.py"), f"model.teacher={teacher_dir}",
                          f"train.output_dir={tmp_path / 'out'}", "train.max_stepz=3"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_sigterm_checkpoints_the_step_it_interrupts_and_resume_continues_bit_identically(teacher_dir, tmp_path):
    """Preemption: SIGTERM mid-run finishes the step, writes a checkpoint, says how to resume and exits with
    143; `resume=latest` then ends where an uninterrupted run ends, weight for weight."""
    import signal
    import time

    common = ["train.checkpoint_every=1000", "loss.gan=false", "export.enabled=false", "optim.lr_schedule=constant"]
    out = tmp_path / "preempted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = _overrides(teacher_dir, out, "train.max_steps=500", *common)
    proc = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "dmd2.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    log = out / "log_rank0.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not log.is_file() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr[-2000:]
    assert "SIGTERM: stopped after step" in stdout and "resume=latest" in stdout
    (ckpt,) = (out / "checkpoints").glob("step_*")
    stopped = int(ckpt.name.split("_")[1])
    assert 3 <= stopped < 500
    end = stopped + 2
    dmd2.main(_cfg(*_overrides(teacher_dir, out, f"train.max_steps={end}", *common, "resume=latest")))
    straight = tmp_path / "straight"
    dmd2.main(_cfg(*_overrides(teacher_dir, straight, f"train.max_steps={end}", *common)))
    a = load_file(str(straight / "checkpoints" / f"step_{end:08d}" / "student.safetensors"))
    b = load_file(str(out / "checkpoints" / f"step_{end:08d}" / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Payload:
    """Unpickling this runs a command (what a crafted checkpoint file would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_executed(teacher_dir, tmp_path):
    import pickle

    args = _overrides(teacher_dir, tmp_path, "train.max_steps=1", "loss.gan=false", "export.enabled=false")
    dmd2.main(_cfg(*args))
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoints" / "step_00000001"
    (ckpt / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"refusing to resume .*custom_checkpoint_0.pkl is not plain tensors"):
        dmd2.main(_cfg(*_overrides(teacher_dir, tmp_path, "train.max_steps=2", "loss.gan=false",
                                   "export.enabled=false", "resume=latest")))
    assert not marker.exists()


def test_results_go_under_the_run_folder_unless_a_path_is_named():
    """A default run never rewrites the committed tables in eval/results/."""
    import sid
    import sim
    import swiftbrush

    for config in (dmd2.DMD2Config, sid.SiDConfig, sim.SIMConfig, swiftbrush.SwiftBrushConfig):
        assert config().eval.results is None


def test_gan_real_images_are_the_teachers_training_split_never_the_reference(teacher_dir, tmp_path):
    """A teacher trained on the held-out digits (the control teacher's `train_config.yaml` records it): the
    GAN's real images are exactly that split, none of them the benchmark's FD reference split; a teacher folder
    without the record is one trained on all the digits."""
    from stepdistill.data import load_digits_tensors, training_split
    from stepdistill.teachers import SHIPPED

    control = tmp_path / "control"
    shutil.copytree(teacher_dir, control)
    (control / "train_config.yaml").write_text("split: heldout\noutput_dir: somewhere\n")
    run = dmd2.setup(_cfg(*_overrides(control, tmp_path / "out", "train.max_steps=2")))
    real = run.setup.dataset.images.flatten(1)
    held, _ = load_digits_tensors(16, "heldout")
    ref, _ = load_digits_tensors(16, "reference")
    assert torch.equal(real, held.flatten(1))
    assert torch.cdist(real, ref.flatten(1)).min() > 0  # no reference digit among them
    assert training_split(teacher_dir) == "all" and training_split(SHIPPED["digits-heldout"]) == "heldout"
    (control / "train_config.yaml").write_text("split: reference_and_more\n")
    with pytest.raises(ValueError, match="names digits split 'reference_and_more'"):
        training_split(control)


def test_the_gan_sees_unlabelled_reals_and_fakes_under_the_null_condition(teacher_dir, tmp_path, monkeypatch):
    """Real images from a folder without classes: both halves of the discriminator's batch are judged under the
    null condition, so it cannot tell fakes from reals by their labels (fakes are drawn with labels)."""
    from PIL import Image

    from stepdistill.denoiser import Denoiser
    from stepdistill.training import Draw, dmd

    folder = tmp_path / "reals"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(((torch.rand(16, 16) * 255).byte()).numpy(), mode="L").save(folder / f"{i}.png")
    run = dmd2.setup(_cfg(*_overrides(teacher_dir, tmp_path / "run", f"data.images={folder}", "data.image_channels=1")))
    seen = []
    features = Denoiser.features

    def spy(self, x_t, t, **cond):
        seen.append(cond["class_labels"].clone())
        return features(self, x_t, t, **cond)

    monkeypatch.setattr(Denoiser, "features", spy)
    draw = Draw(run.setup.accelerator, 8, 0, 0)
    labels = torch.arange(8) % 10
    x = dmd.generate(run, draw, labels)
    dmd.fake_score_loss(run, draw, x, labels)
    null = run.setup.conditioner.cond(torch.tensor([-1]))["class_labels"]
    assert len(seen) == 1 and seen[0].shape == (16,)
    assert bool((seen[0] == null).all()), seen[0]


@pytest.mark.parametrize("ratio", [1, 5])
def test_the_generator_warms_up_over_the_same_training_steps_as_the_fake_score(teacher_dir, tmp_path, ratio):
    """optim.warmup_steps counts training steps: the generator, which updates once every update_ratio of them,
    reaches its full rate after warmup_steps / update_ratio of its own updates, when the fake score reaches its."""
    run = dmd2.setup(_cfg(*_overrides(teacher_dir, tmp_path, "optim.warmup_steps=10", f"optim.update_ratio={ratio}",
                                      "train.max_steps=100", "optim.lr_schedule=constant")))
    factor_g, factor_f = (getattr(sched, "scheduler", sched).lr_lambdas[0] for sched in (run.sched_g, run.sched_f))
    updates = 10 // ratio  # the generator's updates in the first 10 training steps
    assert factor_f(10) == pytest.approx(1.0) and factor_f(9) < 1
    assert factor_g(updates) == pytest.approx(1.0) and factor_g(updates - 1) < 1
