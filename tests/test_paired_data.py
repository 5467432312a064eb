"""Paired real data (stepdistill.data.paired) and the real-image stream (stepdistill.data.stream): the three sources
give the same items, bad sources are one line each, and the stream's batches do not depend on workers, process
count or where a run resumed."""
from __future__ import annotations

import io
import json
import tarfile
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from stepdistill.data.folders import CorruptImageError
from stepdistill.data.paired import DataSourceError, HubDataset, MetadataFolder, PairedImages, TarShards
from stepdistill.data.stream import RealStream
from stepdistill.training.sections import DataConfig

N = 6
CAPTIONS = [f"a square of colour {i}" for i in range(N)]


def colour(i: int) -> tuple[int, int, int]:
    return (40 * i, 255 - 40 * i, (97 * i) % 256)


def png(i: int, size=(20, 14)) -> bytes:
    """Red and green: image i's colour; blue: a ramp across, so crops and flips show."""
    import numpy as np

    pixels = np.empty((size[1], size[0], 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1] = colour(i)[:2]
    pixels[..., 2] = np.linspace(0, 255, size[0]).astype(np.uint8)[None, :]
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def is_colour(x: torch.Tensor, i: int) -> None:
    """`x` (C, ...) holds image i's red and green."""
    expected = (torch.tensor(colour(i)[:2]).float() / 127.5 - 1).view(2, *[1] * (x.dim() - 1))
    torch.testing.assert_close(x[:2], expected.expand_as(x[:2]), atol=2 / 255, rtol=0)


def metadata_folder(root, n=N, *, extra: dict | None = None):
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        (root / f"{i}.png").write_bytes(png(i))
        rows.append({"file_name": f"{i}.png", "text": CAPTIONS[i], "label": i % 3, **(extra or {})})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def saved_dataset(root, n=N):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": png(i), "path": None} for i in range(n)],
                                     "caption": CAPTIONS[:n], "label": [i % 3 for i in range(n)]}, features=features)
    ds.save_to_disk(str(root))
    return root


def shards(root, n=N, per_shard=3):
    """Two webdataset shards written by webdataset's own writer."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    for shard in range(-(-n // per_shard)):
        with wds.TarWriter(str(root / f"part-{shard:03d}.tar")) as sink:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                sink.write({"__key__": f"sample{i:04d}", "png": png(i), "txt": CAPTIONS[i], "cls": i % 3})
    return f"{root}/part-{{000..{-(-n // per_shard) - 1:03d}}}.tar"


@pytest.fixture
def sources(tmp_path):
    return {
        "metadata.jsonl": MetadataFolder(metadata_folder(tmp_path / "folder"), want="captions"),
        "save_to_disk": HubDataset(str(saved_dataset(tmp_path / "saved")), want="captions"),
        "webdataset": TarShards(shards(tmp_path / "shards"), want="captions"),
    }


def test_the_three_sources_give_the_same_captioned_items(sources):
    for name, source in sources.items():
        assert source.captions == CAPTIONS, name
        data = PairedImages(source, 8)
        assert len(data) == N
        for i in range(N):
            item = data[i]
            assert item["images"].shape == (3, 8, 8)
            is_colour(item["images"], i)
            assert int(item["class_labels"]) == i  # caption i (caption_offset 0)
        data.caption_offset = 10  # after a prompt file's 10 prompts in the conditioner's table
        assert int(data[2]["class_labels"]) == 12


def test_class_labels_from_each_source(tmp_path):
    made = [MetadataFolder(metadata_folder(tmp_path / "f"), want="labels"),
            HubDataset(str(saved_dataset(tmp_path / "d")), want="labels"),
            TarShards(shards(tmp_path / "s"), want="labels")]
    for source in made:
        assert source.labels == [i % 3 for i in range(N)] and source.captions is None
        assert int(PairedImages(source, 8)[4]["class_labels"]) == 1
    # an unconditional teacher reads images only
    assert "class_labels" not in PairedImages(MetadataFolder(tmp_path / "f", want=None), 8)[0]


def test_bad_sources_are_one_line_each(tmp_path):
    folder = metadata_folder(tmp_path / "f")
    with pytest.raises(DataSourceError, match="no caption column 'prompt_en'; its columns"):
        MetadataFolder(folder, want="captions", caption_column="prompt_en")
    with pytest.raises(DataSourceError, match="no caption column 'alt'"):
        HubDataset(str(saved_dataset(tmp_path / "d")), want="captions", caption_column="alt")
    with pytest.raises(DataSourceError, match="no such folder"):
        HubDataset(str(tmp_path / "missing"), want="captions")
    with pytest.raises(DataSourceError, match="could not be loaded"):
        HubDataset("nobody/no-such-dataset", want="captions")  # offline in tests: the Hub is not reached
    pattern = shards(tmp_path / "s")
    (tmp_path / "s" / "part-001.tar").write_bytes(b"")
    with pytest.raises(DataSourceError, match="part-001.tar holds no samples"):
        TarShards(pattern, want="captions")
    with tarfile.open(tmp_path / "s" / "part-001.tar", "w"):
        pass  # a tar with no members
    with pytest.raises(DataSourceError, match="part-001.tar holds no samples"):
        TarShards(pattern, want="captions")
    (tmp_path / "s" / "part-001.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(DataSourceError, match="part-001.tar is not a readable tar"):
        TarShards(pattern, want="captions")
    with pytest.raises(DataSourceError, match="matches no files"):
        TarShards(str(tmp_path / "nowhere" / "*.tar"), want="captions")
    (folder / "3.png").write_bytes(png(3)[:40])  # truncated
    with pytest.raises(CorruptImageError, match="3.png"):
        PairedImages(MetadataFolder(folder, want="captions"), 8)
    kept = pytest.warns(UserWarning, match="skipped 1 corrupt")
    with kept:
        data = PairedImages(MetadataFolder(folder, want="captions"), 8, skip_corrupt=True)
    assert len(data) == N - 1 and int(data[3]["class_labels"]) == 4  # its own caption still


class _Acc(SimpleNamespace):
    device = torch.device("cpu")


def _draw(step, rank=0, processes=1, batch=4, seed=0):
    return SimpleNamespace(step=step, seed=seed, batch=batch, acc=_Acc(process_index=rank, num_processes=processes))


def _run(stream, steps, calls=1, **kw):
    return [[stream.take(_draw(s, **kw)) for _ in range(calls)] for s in steps]


def test_the_stream_does_not_depend_on_workers_processes_or_resume(sources):
    data = PairedImages(sources["webdataset"], 8, center_crop=False, random_flip=True)  # random crops and flips
    alone = _run(RealStream(data, workers=0), range(6), calls=2)
    workers = _run(RealStream(data, workers=2), range(6), calls=2)
    halves = [_run(RealStream(data, workers=1), range(6), calls=2, rank=r, processes=2) for r in range(2)]
    resumed = _run(RealStream(data, workers=2), range(3, 6), calls=2)
    for step in range(6):
        for call in range(2):
            images, labels = alone[step][call]
            assert torch.equal(workers[step][call][0], images) and torch.equal(workers[step][call][1], labels)
            assert torch.equal(torch.cat([h[step][call][0] for h in halves]), images)
            if step >= 3:
                assert torch.equal(resumed[step - 3][call][0], images)
    # the two calls of a step, and successive steps, draw different batches
    assert not torch.equal(alone[0][0][1], alone[0][1][1]) or not torch.equal(alone[0][0][0], alone[0][1][0])
    assert not torch.equal(alone[0][0][0], alone[1][0][0])
    # each image is its caption's: the label names the colour (a crop of a solid square is that colour)
    images, labels = alone[2][0]
    for x, label in zip(images, labels):
        is_colour(x, int(label))


def test_an_unpredicted_request_restarts_the_workers_and_still_gets_its_batch(sources):
    data = PairedImages(sources["metadata.jsonl"], 8)
    steady = RealStream(data, workers=1)
    _run(steady, range(4))
    assert steady.restarts == 0  # one call a step, predicted after the first
    reference = _run(RealStream(data, workers=0), [5, 5, 9])
    wandering = RealStream(data, workers=1)
    got = [wandering.take(_draw(5)), wandering.take(_draw(5)), wandering.take(_draw(9))]
    assert wandering.restarts >= 1
    for (a, _), (b, _) in zip([r[0] for r in reference], got):
        assert torch.equal(a, b)


@pytest.mark.parametrize("source,with_prompts", [  # the quick tier: a captioned folder; the other sources: slow
    ("metadata.jsonl", False), pytest.param("save_to_disk", False, marks=pytest.mark.slow),
    pytest.param("webdataset", False, marks=pytest.mark.slow), ("metadata.jsonl", True)])
def test_a_text_to_image_run_trains_on_each_source_and_its_gan_judges_each_image_under_its_own_caption(
        source, with_prompts, tmp_path, monkeypatch, fresh_accelerate_state):
    """DMD2 on the tiny SD pipeline: real images come with their captions' labels, and the discriminator's real half
    is conditioned on exactly those (the official code's); without a prompt file the generator trains on the
    captions, with one on its prompts (the captions then follow them in the conditioner's table)."""
    import dmd2
    import quick

    from stepdistill.data.stream import RealStream
    from stepdistill.training import Draw
    from stepdistill.training.setup import trainable_params

    made = {"metadata.jsonl": lambda: f"data.images={metadata_folder(tmp_path / 'folder')}",
            "save_to_disk": lambda: f"data.dataset={saved_dataset(tmp_path / 'saved')}",
            "webdataset": lambda: f"data.shards={shards(tmp_path / 'shards')}"}[source]()
    extra = []
    if with_prompts:
        (tmp_path / "prompts.txt").write_text("a prompt\nanother prompt\n")
        extra = [f"data.prompts={tmp_path / 'prompts.txt'}"]
    cfg = quick.config("dmd2", "tiny-sd", tmp_path / "run", made, *extra, "train.batch_size=2",
                       "optim.update_ratio=1", "data.loader_workers=1")
    run = dmd2.setup(cfg)
    s = run.setup
    offset = 2 if with_prompts else 0
    assert s.conditioner.num_classes == (2 if with_prompts else N) and s.labelled_real
    assert s.real.workers == 1  # data.loader_workers
    taken, conditioned = [], []
    take, cond = RealStream.take, type(s.conditioner).cond

    def spy_take(self, draw):
        taken.append(take(self, draw))
        return taken[-1]

    def spy_cond(self, labels):
        conditioned.append(labels.clone())
        return cond(self, labels)

    monkeypatch.setattr(RealStream, "take", spy_take)
    monkeypatch.setattr(type(s.conditioner), "cond", spy_cond)
    before = [p.detach().clone() for p in trainable_params(run.generator)]
    for step in range(2):
        logs = dmd2.step(run, Draw(s.accelerator, 2, seed=0, step=step), step)
        assert all(v == v for v in logs.values()), logs  # finite
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable_params(run.generator)))
    assert len(taken) == 2
    for images, labels in taken:
        assert bool((labels >= offset).all())
        for x, label in zip(images, labels.tolist()):  # each image under its own caption
            is_colour(x, CAPTIONS.index(s.conditioner.text(label)))
        # the discriminator's batch: the reals' own labels first, then the fakes'
        assert any(len(c) == 4 and torch.equal(c[:2], labels) for c in conditioned)
    generated = [c for c in conditioned if len(c) == 2 and bool((c >= 0).all())]
    assert generated and all(bool((c < s.conditioner.num_classes).all()) for c in generated)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_stream_leaves_torchs_global_generator_alone(sources, workers):
    """Dropout and the rest draw from torch's global generator; a stream (its loader's start, its crops) must not,
    or a resumed run, whose loader starts at another step, would train differently."""
    data = PairedImages(sources["metadata.jsonl"], 8, center_crop=False, random_flip=True)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    stream = RealStream(data, workers=workers)
    stream.take(_draw(3))
    stream.take(_draw(7))  # unpredicted: a second loader
    assert torch.equal(torch.get_rng_state(), state)


def test_lcm_on_real_images_solves_the_teachers_step_under_each_images_caption(tmp_path, monkeypatch,
                                                                               fresh_accelerate_state):
    """Consistency distillation with `loss.states=real` on a captioned folder: the teacher's guided step from each
    noised real image is conditioned on that image's caption."""
    import consistency_distill as cd
    import quick

    from stepdistill.data.stream import RealStream
    from stepdistill.training import Draw

    folder = metadata_folder(tmp_path / "folder")
    cfg = quick.config("consistency_distill", "tiny-sd", tmp_path / "run", f"data.images={folder}",
                       "train.batch_size=2", "data.loader_workers=0", "loss.states=real")
    run = cd.setup(cfg)
    taken, guided = [], []
    take, guide = RealStream.take, cd.guided_teacher
    monkeypatch.setattr(RealStream, "take", lambda self, draw: taken.append(take(self, draw)) or taken[-1])
    monkeypatch.setattr(cd, "guided_teacher",
                        lambda run, w, labels: guided.append(labels.clone()) or guide(run, w, labels))
    cd.step(run, Draw(run.setup.accelerator, 2, seed=0, step=0), 0)
    images, labels = taken[0]
    assert len(guided) == 1 and torch.equal(guided[0], labels)
    for x, label in zip(images, labels.tolist()):
        is_colour(x, CAPTIONS.index(run.setup.conditioner.text(label)))


def test_a_class_conditional_gan_judges_real_images_under_their_own_labels(digits_like_teacher, tmp_path, monkeypatch,
                                                                           fresh_accelerate_state):
    """`data.label_column` on a class-conditional teacher: DMD2's discriminator sees each real image with its label."""
    import dmd2
    import quick

    from stepdistill.data.stream import RealStream
    from stepdistill.denoiser import Denoiser
    from stepdistill.training import Draw, dmd

    folder = tmp_path / "digits"
    folder.mkdir()
    rows = []
    for i in range(6):
        Image.fromarray(((torch.rand(16, 16) * 255).byte()).numpy(), mode="L").save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "digit": (3 * i) % 10}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    cfg = quick.config("dmd2", digits_like_teacher, tmp_path / "run", f"data.images={folder}", "data.image_channels=1",
                       "data.label_column=digit", "train.batch_size=8", "data.loader_workers=0",
                       "data.center_crop=false", "data.random_flip=true")
    run = dmd2.setup(cfg)
    assert run.setup.labelled_real
    steps = [type(t).__name__ for t in run.setup.dataset.transform.transforms]  # data.center_crop, data.random_flip
    assert "RandomCrop" in steps and "RandomHorizontalFlip" in steps and "CenterCrop" not in steps
    taken, seen = [], []
    take, features = RealStream.take, Denoiser.features
    monkeypatch.setattr(RealStream, "take", lambda self, draw: taken.append(take(self, draw)) or taken[-1])
    monkeypatch.setattr(Denoiser, "features", lambda self, x_t, t, **cond: seen.append(cond["class_labels"].clone())
                        or features(self, x_t, t, **cond))
    draw = Draw(run.setup.accelerator, 8, 0, 0)
    labels = torch.arange(8) % 10
    dmd.fake_score_loss(run, draw, dmd.generate(run, draw, labels), labels)
    real_labels = taken[0][1]
    assert set(real_labels.tolist()) <= {(3 * i) % 10 for i in range(6)}
    assert torch.equal(seen[0][:8], real_labels) and torch.equal(seen[0][8:], labels)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_with_loader_workers_train_as_one_on_shards(digits_like_teacher, tmp_path):
    """DMD2 with its GAN on labelled webdataset shards, random crops and flips, a loader worker per process: two
    processes x 4 samples train the weights one process x 8 does (float reduction order only)."""
    import webdataset as wds
    from safetensors.torch import load_file

    import quick
    from launching import launch

    root = tmp_path / "shards"
    root.mkdir()
    rng = torch.Generator().manual_seed(0)
    for shard in range(2):
        with wds.TarWriter(str(root / f"digits-{shard}.tar")) as sink:
            for i in range(6):
                buffer = io.BytesIO()
                Image.fromarray((torch.rand(20, 20, generator=rng) * 255).byte().numpy(), mode="L").save(buffer, "PNG")
                sink.write({"__key__": f"{shard}_{i}", "png": buffer.getvalue(), "cls": (shard * 6 + i) % 10})
    extra = [f"data.shards={root}/digits-{{0..1}}.tar", "data.label_column=cls", "data.image_channels=1",
             "data.center_crop=false", "data.random_flip=true", "data.loader_workers=1", "train.batch_size=8",
             "train.max_steps=3", "train.checkpoint_every=3", "optim.update_ratio=1", "export.enabled=false"]
    for processes, name in ((1, "one"), (2, "two")):
        launch("dmd2", processes, quick.overrides(digits_like_teacher, tmp_path / name, *extra))
    one, two = (load_file(str(tmp_path / n / "checkpoints" / "step_00000003" / "model.safetensors"))
                for n in ("one", "two"))
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 5e-5, worst  # Adam's first steps amplify reduction-order differences (other data: ~1e-3)
    logs = {name: [[json.loads(line) for line in (tmp_path / name / f"log_rank{r}.jsonl").read_text().splitlines()
                    if "loss_d" in line] for r in range(ranks)] for name, ranks in (("one", 1), ("two", 2))}
    # the discriminator's loss at the first step is a mean over the real and fake images: the two processes' halves
    # average to the one process's (the same real images, crops and flips)
    first_one, halves = logs["one"][0][0], [log[0] for log in logs["two"]]
    assert first_one["loss_d"] == pytest.approx(sum(h["loss_d"] for h in halves) / 2, rel=1e-5)
    assert first_one["d_real"] == pytest.approx(sum(h["d_real"] for h in halves) / 2, rel=1e-5)


def test_loader_workers_outlive_a_sigterm_so_the_run_can_checkpoint(sources):
    """SLURM and Kubernetes send SIGTERM to every process of a job: a worker that died of it would fail the step the
    training process finishes before its clean stop."""
    import os
    import signal as signals

    data = PairedImages(sources["metadata.jsonl"], 8)
    stream = RealStream(data, workers=2)
    first = stream.take(_draw(0))
    workers = stream._batches._workers  # the loader's worker processes
    assert len(workers) == 2
    for worker in workers:
        os.kill(worker.pid, signals.SIGTERM)
    for worker in workers:
        worker.join(timeout=0.5)
    assert all(w.is_alive() for w in workers)
    again = RealStream(data, workers=0)
    again.take(_draw(0))
    torch.testing.assert_close(stream.take(_draw(1))[0], again.take(_draw(1))[0])
    assert first[0].shape == (4, 3, 8, 8)
    stream.close()  # they ignore SIGTERM, so they must stop when asked (and at exit: `stream._close_all`)
    for worker in workers:
        worker.join(timeout=3)
    assert not any(w.is_alive() for w in workers)


def test_data_split_and_image_column_pick_a_datasets_split_and_column(tmp_path):
    import datasets

    from stepdistill.data.paired import open_source

    features = datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")})
    splits = {name: datasets.Dataset.from_dict({"picture": [{"bytes": png(i), "path": None} for i in rows],
                                                "text": [CAPTIONS[i] for i in rows]}, features=features)
              for name, rows in (("train", [0, 1, 2]), ("test", [4, 5]))}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "saved"))
    data = DataConfig(dataset=str(tmp_path / "saved"), split="test", image_column="picture")
    source = open_source(data, want="captions")
    assert source.captions == CAPTIONS[4:6]
    is_colour(PairedImages(source, 8)[1]["images"], 5)
    with pytest.raises(DataSourceError, match="has no split 'validation'; its splits: \\['test', 'train'\\]"):
        open_source(DataConfig(dataset=str(tmp_path / "saved"), split="validation"), want="captions")
