"""Multi-student distillation on a tiny class-conditional teacher: the partition and its router, each student
confined to its part, a shared fake score, resume, one vs two processes, export."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
import quick  # noqa: E402
from launching import launch  # noqa: E402
from without_stepdistill import SEEDED, images_without_stepdistill  # noqa: E402
import msd  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402
from stepdistill.partition import PartConditioner, class_blocks, kmeans  # noqa: E402
from stepdistill.training import Draw  # noqa: E402


def _overrides(teacher, out, *extra):
    return quick.overrides(teacher, out, "train.batch_size=8", "optim.update_ratio=2", "model.students=2", *extra)


def _cfg(*overrides):
    return apply_overrides(msd.MSDConfig(), list(overrides))


@pytest.mark.parametrize("classes,k", [(10, 1), (10, 3), (10, 4), (10, 10), (7, 2)])
def test_class_blocks_route_every_condition_to_exactly_one_student(classes, k):
    p = class_blocks(classes, k)
    parts = [p.part(s) for s in range(k)]
    assert sorted(sum(parts, [])) == list(range(classes)) and all(parts)  # a cover, every student owns some
    assert max(map(len, parts)) - min(map(len, parts)) <= 1 and all(b == list(range(b[0], b[-1] + 1)) for b in parts)
    labels = torch.arange(classes)
    assert [sum(int(labels[i]) in part for part in parts) for i in range(classes)] == [1] * classes
    assert p.route(labels).tolist() == [next(s for s in range(k) if c in parts[s]) for c in range(classes)]


def test_kmeans_keeps_clusters_together_and_leaves_no_student_empty():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + torch.randn(6, 2, generator=g) for c in centres])
    p = kmeans(points, 3)
    assert [len(set(p.owner[i * 6:(i + 1) * 6])) for i in range(3)] == [1, 1, 1] and len(set(p.owner)) == 3
    same = kmeans(torch.zeros(4, 2), 4)  # identical points: every student still gets one
    assert sorted(same.owner) == [0, 1, 2, 3]


def test_each_student_draws_and_sees_only_its_part(digits_like_teacher, tmp_path):
    run = msd.setup(_cfg(*_overrides(digits_like_teacher, tmp_path)))
    assert [r.setup.conditioner.part.tolist() for r in run.runs] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    for k, sub in enumerate(run.runs):
        assert isinstance(sub.setup.conditioner, PartConditioner)
        labels = sub.setup.conditioner.sample_labels(500, generator=torch.Generator().manual_seed(0))
        assert set(labels.tolist()) == set(run.partition.part(k))
        real = torch.stack([sub.setup.dataset[i]["class_labels"] for i in range(len(sub.setup.dataset))])
        assert set(real.tolist()) == set(run.partition.part(k))  # the GAN's real images: its classes only
        draw = msd.student_draw(run, Draw(run.setup.accelerator, 8, 0, 3), k, 3)
        assert draw.batch == 4  # an equal share of the global batch
    first = [msd.student_draw(run, Draw(run.setup.accelerator, 8, 0, 3), k, 3).randn(3) for k in range(2)]
    assert not torch.equal(*first)  # each student its own noise
    assert run.runs[0].fake_score is not run.runs[1].fake_score


def test_a_shared_fake_score_is_one_network_and_one_optimiser_trained_by_every_student(digits_like_teacher, tmp_path):
    run = msd.setup(_cfg(*_overrides(digits_like_teacher, tmp_path, "model.fake_score=shared", "loss.gan=false")))
    a, b = run.runs
    assert a.fake_score is b.fake_score and a.head is b.head and a.opt_f is b.opt_f
    assert a.generator is not b.generator and a.opt_g is not b.opt_g
    before = [p.detach().clone() for p in a.fake_score.parameters()]
    calls, backward = [], []
    original, original_backward = a.opt_f.step, run.setup.accelerator.backward
    a.opt_f.step = lambda *args, **kw: (calls.append(1), original(*args, **kw))[1]
    run.setup.accelerator.backward = lambda loss, **kw: (backward.append(loss.item()), original_backward(loss, **kw))
    logs = [msd.step(run, Draw(run.setup.accelerator, 8, 0, k), k) for k in range(3)]
    # one fake-score update a training step, on every student's samples: its schedule counts training steps (not
    # K times as fast, which would end its warm-up and decay K times early)
    assert len(calls) == 3 and a.sched_f.scheduler.last_epoch == 3
    assert any(not torch.equal(p, q) for p, q in zip(before, a.fake_score.parameters()))
    # step 1 has no generator turn (update_ratio 2): two backward passes, each student's loss over K, whose sum is
    # the mean the step logs
    assert len(backward) == 4 + 2 + 4 and sum(backward[4:6]) == pytest.approx(logs[1]["loss_fake"], rel=1e-5)


@pytest.mark.slow
def test_the_export_is_one_pipeline_that_routes_each_label_to_its_student_without_stepdistill(
        digits_like_teacher, tmp_path):
    out = tmp_path / "run"
    msd.main(_cfg(*_overrides(digits_like_teacher, out, "train.max_steps=2", "train.checkpoint_every=2",
                              "optim.lr_generator=1e-3")))
    index = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index["owner"] == [0] * 5 + [1] * 5 and "unet_1" in index and "unet_2" not in index
    assert "student 1: classes [5, 6, 7, 8, 9]" in (out / "pipeline" / "README.md").read_text()
    images = images_without_stepdistill(out / "pipeline", tmp_path, "class_labels=[7, 3, 9, 0], " + SEEDED)
    # the trained students, routed by stepdistill, from the same generator: the same images in the same order
    from stepdistill.student import RoutedStudent

    weights = load_file(str(sorted((out / "checkpoints").glob("step_*"))[-1] / "student.safetensors"))
    run = msd.setup(_cfg(*_overrides(digits_like_teacher, tmp_path / "fresh")))
    routed = msd.students(run)[0]
    assert isinstance(routed, RoutedStudent)
    routed.load_state_dict(weights)
    expected = routed.images(torch.tensor([7, 3, 9, 0]), torch.Generator().manual_seed(0)) * 0.5 + 0.5
    torch.testing.assert_close(images, expected, atol=1e-5, rtol=0)
    teacher = load_file(str(digits_like_teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    assert max(float((weights[f"students.1.denoiser.net.{k}"] - v).abs().max()) for k, v in teacher.items()) > 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("teacher", ["tiny-sd", "tiny-flux"])
def test_text_students_export_as_one_pipeline_that_routes_prompts_without_stepdistill(teacher, tmp_path, monkeypatch):
    """k-means on the prompts' embeddings, two students; the folder loads in a process without stepdistill and
    gives stepdistill's routed images for the card's own call; unseen prompts are routed in the space the
    partition was made in (the training prompts, routed as if unseen, land with their owners)."""
    import re

    from diffusers import DiffusionPipeline
    from stepdistill.config import load_config

    monkeypatch.setenv("STEPDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    flux = ["model.teacher=tiny-flux", "model.generator_timesteps=[1.0]", "data.resolution=64"]
    args = ["--config", "recipes/configs/msd/tiny_t2i.yaml", "optim.lr_generator=1e-2",  # students that differ
            *(flux if teacher == "tiny-flux" else [])]
    msd.main(load_config(msd.MSDConfig, [*args, f"train.output_dir={tmp_path / 'run'}"]))
    folder = tmp_path / "run" / "pipeline"
    index = json.loads((folder / "model_index.json").read_text())
    prompts, owner = index["prompts"], index["owner"]
    assert sorted(set(owner)) == [0, 1] and "student_1" in index and "student_2" not in index
    card = (folder / "README.md").read_text()
    assert f"- student 1: prompts {repr(prompts[owner.index(1)])}" in card and "trust_remote_code=True" in card

    pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    assert pipe.route(prompts) == owner
    pipe.register_to_config(prompts=[], owner=[])
    assert pipe.route(prompts) == owner

    picked = [owner.index(1), owner.index(0), owner.index(1)]  # students out of order, one twice
    call = re.search(r'pipe\("a photo of a cat", (.*?),\s*generator=', card, re.S).group(1)
    images = images_without_stepdistill(folder, tmp_path, f"{[prompts[i] for i in picked]!r}, {call}, {SEEDED}")
    run = msd.setup(load_config(msd.MSDConfig, [*args, f"train.output_dir={tmp_path / 'fresh'}"]))
    routed = msd.students(run)[0]
    routed.load_state_dict(load_file(str(sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
                                         / "student.safetensors")))
    expected = routed.images(torch.tensor(picked), torch.Generator().manual_seed(0)) * 0.5 + 0.5
    torch.testing.assert_close(images, expected, atol=3e-3, rtol=0)


def test_resume_restores_every_student(digits_like_teacher, tmp_path):
    """Stopped after its first step (a zero time limit), then resumed: every student's generator, fake score and
    optimiser states continue as in the uninterrupted run."""
    extra = ("train.max_steps=4", "train.checkpoint_every=2", "export.enabled=false")
    msd.main(_cfg(*_overrides(digits_like_teacher, tmp_path / "straight", *extra)))
    with pytest.warns(UserWarning, match="limit stopped training at step 1 of 4"):
        msd.main(_cfg(*_overrides(digits_like_teacher, tmp_path / "resumed", *extra, "train.time_limit_minutes=0")))
    msd.main(_cfg(*_overrides(digits_like_teacher, tmp_path / "resumed", *extra, "resume=latest")))
    last = [sorted((tmp_path / r / "checkpoints").glob("step_*"))[-1] for r in ("straight", "resumed")]
    a, b = [load_file(str(c / "student.safetensors")) for c in last]
    assert {k.split(".")[1] for k in a} == {"0", "1"} and set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    models = sorted(p.name for p in last[0].glob("model*.safetensors"))
    assert len(models) == 6  # two generators, two fake scores, two heads
    for name in models:
        x, y = load_file(str(last[0] / name)), load_file(str(last[1] / name))
        assert all(torch.equal(x[k], y[k]) for k in x), name


def _launch(teacher, out, processes, *extra):
    launch("msd", processes, _overrides(teacher, out, "train.max_steps=3", "train.checkpoint_every=3",
                                        "export.enabled=false", "optim.lr_generator=1e-3", "optim.lr_fake=1e-3", *extra))
    return load_file(str(sorted((out / "checkpoints").glob("step_*"))[-1] / "student.safetensors"))


def _close(one, two, teacher) -> None:
    """Reduction order only: Adam's first steps turn float noise in near-zero gradients into +-lr updates on a
    few weights (0.04% here), so the bound is on the mean and on how many weights differ at all."""
    base = load_file(str(teacher / "unet" / "diffusion_pytorch_model.safetensors"))
    diff = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    moved = torch.cat([(one[f"students.{s}.denoiser.net.{k}"] - v).abs().flatten()
                       for s in (0, 1) for k, v in base.items()])
    assert set(one) == set(two)
    assert float(diff.mean()) < 1e-3 * float(moved.mean()) and float((diff > 1e-5).float().mean()) < 2e-3


@pytest.mark.slow
@pytest.mark.multiprocess
def test_process_owned_students_train_as_one_process_training_them_in_turn(digits_like_teacher, tmp_path):
    """model.parallel=students: each of two processes trains one student alone (no all-reduce between them); the
    checkpoint, written by the main process after the owners' states are gathered, holds both students as the
    one-process run trains them, and its log shows only its own student's losses."""
    one = _launch(digits_like_teacher, tmp_path / "one", 1)
    owned = _launch(digits_like_teacher, tmp_path / "owned", 2, "model.parallel=students")
    _close(one, owned, digits_like_teacher)
    ranks = [[json.loads(line) for line in (tmp_path / "owned" / f"log_rank{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    assert ranks[0][0]["loss_fake"] != ranks[1][0]["loss_fake"]  # each process logs its own student


@pytest.mark.parametrize("override,match", [
    ("model.students=11", "model.students=11 must lie in [1, 10]"),
    ("train.batch_size=6", "train.batch_size=6 must be divisible by model.students=4"),
    ("model.partition=kmeans", "model.partition=kmeans clusters prompts"),
])
def test_bad_msd_input_fails_before_any_step(digits_like_teacher, tmp_path, override, match):
    args = [a for a in _overrides(digits_like_teacher, tmp_path) if not a.startswith("model.students")]
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("]", r"\]")):
        msd.setup(_cfg(*args, "model.students=4", override))


def test_teacher_score_matching_lowers_a_smaller_students_error_against_the_teacher_on_its_part(
        digits_like_teacher, tmp_path):
    run = msd.setup(_cfg(*_overrides(digits_like_teacher, tmp_path, "model.student_width=0.5", "model.tsm_steps=30",
                                     "train.max_steps=40", "optim.lr_tsm=3e-3")))
    teacher_params = sum(p.numel() for p in run.setup.teacher.net.parameters())
    sub = run.runs[1]
    assert sum(p.numel() for p in sub.generator.parameters()) < 0.75 * teacher_params  # a smaller network
    s, g = sub.setup, torch.Generator().manual_seed(5)
    labels = torch.tensor(run.partition.part(1) * 4)
    x0 = torch.stack([s.dataset[i]["images"] for i in range(len(labels))])
    t = torch.randint(20, 980, (len(labels),), generator=g).float()
    x_t = s.schedule.add_noise(x0, torch.randn(x0.shape, generator=g), t)

    def error() -> float:
        with torch.no_grad():
            cond = s.conditioner.cond(labels)
            return float((sub.generator(x_t, t, **cond) - sub.real_guided.denoiser(x_t, t, **cond)).square().mean())

    before = error()
    logs = [msd.step(run, Draw(run.setup.accelerator, 8, 0, i), i) for i in range(30)]
    assert all(set(r) == {"loss_tsm"} for r in logs)  # the TSM stage only, for tsm_steps steps
    assert error() < 0.5 * before
    assert "loss_fake" in msd.step(run, Draw(run.setup.accelerator, 8, 0, 30), 30)  # then distribution matching
