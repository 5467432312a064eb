"""Streamed datasets (`data.streaming`, stepdistill.data.streamed): each image arrives with its own caption, the order
does not depend on loader workers, a resume carries on with the next row, processes read disjoint rows, and what a
stream cannot serve is refused before any work."""
from __future__ import annotations

import warnings

import pytest
import torch
from test_paired_data import CAPTIONS, N, _draw, is_colour, png, saved_dataset

from stepdistill.data.folders import CorruptImageError
from stepdistill.data.paired import DataSourceError
from stepdistill.data.streamed import OrderedStream, StreamedSource


@pytest.fixture(autouse=True)
def no_epoch_pause(monkeypatch):
    """`datasets` pauses 5 s at the end of each epoch of a shuffled parquet stream (an Arrow thread-shutdown
    workaround): one pause an epoch is nothing on a real dataset, but these epochs are six rows long."""
    import datasets

    monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)


def parquet_folder(root, n=N, *, labels: bool = False, corrupt: int | None = None):
    """A folder of data files (`load_dataset` reads it: what a Hub dataset's repository holds), one parquet file."""
    import datasets

    columns = {"image": datasets.Image(), "caption": datasets.Value("string")}
    rows = {"image": [{"bytes": b"not an image" if i == corrupt else png(i), "path": None} for i in range(n)],
            "caption": CAPTIONS[:n]}
    if labels:
        columns["label"], rows["label"] = datasets.Value("int64"), [i % 3 for i in range(n)]
    root.mkdir(parents=True)
    datasets.Dataset.from_dict(rows, features=datasets.Features(columns)).to_parquet(str(root / "train.parquet"))
    return root


def by_caption(texts: list[str]) -> torch.Tensor:
    return torch.tensor([CAPTIONS.index(t) for t in texts])


def take(stream, steps, **kw):
    return [stream.take(_draw(s, **kw)) for s in steps]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("streamed")
    return {"parquet": str(parquet_folder(root / "parquet")), "save_to_disk": str(saved_dataset(root / "saved"))}


@pytest.mark.parametrize("kind", ["parquet", "save_to_disk"])
def test_a_stream_pairs_each_image_with_its_caption_and_covers_every_row_each_epoch(folders, kind):
    stream = OrderedStream(StreamedSource(folders[kind], want="captions", shuffle_buffer=4), 8, label=by_caption)
    batches = take(stream, range(3))  # 12 rows: two epochs of 6
    for images, labels in batches:
        for x, label in zip(images, labels):
            is_colour(x, int(label))  # the caption's image
    seen = torch.cat([labels for _, labels in batches]).tolist()
    assert sorted(seen[:N]) == sorted(seen[N:]) == list(range(N))  # an epoch is every row once
    assert seen[:N] != list(range(N)) and seen[:N] != seen[N:]  # shuffled, and reshuffled each epoch
    assert stream.taken == 12


def test_workers_do_not_change_the_rows_and_a_resume_goes_on_with_the_next(folders):
    source = StreamedSource(folders["parquet"], want="captions", shuffle_buffer=4)
    alone = take(OrderedStream(source, 8, label=by_caption, center_crop=False, random_flip=True), range(4))
    workers = take(OrderedStream(source, 8, workers=2, label=by_caption, center_crop=False, random_flip=True), range(4))
    first = OrderedStream(source, 8, label=by_caption, center_crop=False, random_flip=True)
    take(first, range(2))
    state = first.state_dict()
    assert state == {"rows": 8, "processes": 1}
    resumed = OrderedStream(source, 8, workers=1, label=by_caption, center_crop=False, random_flip=True)
    resumed.load_state_dict(state)
    after = take(resumed, range(2, 4))
    for step in range(4):
        assert torch.equal(workers[step][0], alone[step][0]) and torch.equal(workers[step][1], alone[step][1])
        if step >= 2:  # the same rows, and the same random crops and flips
            assert torch.equal(after[step - 2][0], alone[step][0]) and torch.equal(after[step - 2][1], alone[step][1])


def test_two_processes_read_disjoint_halves_and_a_changed_count_warns_on_resume(folders):
    source = StreamedSource(folders["parquet"], want="captions", shuffle_buffer=0)
    in_order = OrderedStream(source, 8, label=by_caption).take(_draw(0, batch=N))[1]
    assert in_order.tolist() == list(range(N))  # data.shuffle_buffer=0: the stream's own order
    halves = [take(OrderedStream(source, 8, label=by_caption), range(1), rank=r, processes=2)[0][1] for r in range(2)]
    assert len(halves[0]) == len(halves[1]) == 2
    assert not set(halves[0].tolist()) & set(halves[1].tolist())
    stream = OrderedStream(source, 8, label=by_caption)
    stream.load_state_dict({"rows": 2, "processes": 2})
    with pytest.warns(UserWarning, match="saved with 2 processes and resumes with 1"):
        stream.take(_draw(0))


def test_class_labels_arrive_with_their_rows_and_an_unknown_class_is_named(tmp_path):
    folder = str(parquet_folder(tmp_path / "labelled", labels=True))
    images, labels = OrderedStream(StreamedSource(folder, want="labels", shuffle_buffer=0), 8).take(_draw(0, batch=6))
    assert labels.tolist() == [i % 3 for i in range(N)]
    with pytest.raises(DataSourceError, match=r"has class label 2, but the teacher has 2 classes \(0..1\)"):
        OrderedStream(StreamedSource(folder, want="labels", shuffle_buffer=0), 8, num_classes=2).take(_draw(0))
    unlabelled = OrderedStream(StreamedSource(folder, want=None, shuffle_buffer=0), 8)
    assert unlabelled.take(_draw(0))[1] is None


def test_a_corrupt_row_is_named_when_it_arrives_or_skipped(tmp_path):
    folder = str(parquet_folder(tmp_path / "corrupt", corrupt=1))
    source = StreamedSource(folder, want="captions", shuffle_buffer=0)
    with pytest.raises(CorruptImageError, match=r"corrupt image in data.dataset=.* row 1 of this process's stream"):
        OrderedStream(source, 8, label=by_caption).take(_draw(0))
    stream = OrderedStream(source, 8, label=by_caption, skip_corrupt=True)
    with pytest.warns(UserWarning, match="skipped a corrupt image"):
        _, labels = stream.take(_draw(0))
    assert labels.tolist() == [0, 2, 3, 4] and stream.taken == 5  # the skipped row counts: a resume starts after it


def test_bad_streamed_sources_are_one_line_each(folders, tmp_path):
    with pytest.raises(DataSourceError, match="no caption column 'alt'"):
        StreamedSource(folders["parquet"], want="captions", caption_column="alt")
    with pytest.raises(DataSourceError, match="no such folder"):
        StreamedSource(str(tmp_path / "missing"), want="captions")
    with pytest.raises(DataSourceError, match="has no split 'validation'"):
        StreamedSource(folders["parquet"], want="captions", split="validation")
    with pytest.raises(ValueError, match="data.shuffle_buffer=-1 must be >= 0"):
        StreamedSource(folders["parquet"], want="captions", shuffle_buffer=-1)


def test_streamed_captions_take_labels_from_a_ring_past_every_prompt():
    from stepdistill.conditioning import STREAMED, STREAMED_BASE, TextConditioner

    class Encoder:
        encoded: list[str] = []

        def null(self):
            return {"hidden": torch.zeros(1, 2, 3)}

        def encode(self, texts):
            Encoder.encoded += texts
            return {"hidden": torch.stack([torch.full((2, 3), float(len(t))) for t in texts])}

    conditioner = TextConditioner(["p0", "p1"], Encoder())
    first = conditioner.streamed_labels(["a", "bb"])
    assert first.tolist() == [STREAMED_BASE, STREAMED_BASE + 1] and conditioner.text(STREAMED_BASE + 1) == "bb"
    assert conditioner.embeddings(first)[:, 0, 0].tolist() == [1.0, 2.0]
    conditioner._streamed = STREAMED  # the ring comes round: slot 0 holds a new caption, its old embedding is gone
    again = conditioner.streamed_labels(["cccc"])
    assert again.tolist() == [STREAMED_BASE] and conditioner.embeddings(again)[:, 0, 0].tolist() == [4.0]
    assert conditioner.labels_for(["validation"]).tolist() == [2]  # other labels are untouched by the ring


def test_a_text_to_image_gan_on_a_stream_judges_each_image_under_its_own_caption_and_checkpoints_its_place(
        folders, tmp_path, monkeypatch, fresh_accelerate_state):
    """DMD2 on the tiny SD pipeline, `data.streaming=true` on a folder of parquet files: the discriminator's real half
    is conditioned on each streamed image's own caption, the generator on the prompt file's prompts, and the stream's
    place is part of the run's checkpoint."""
    import dmd2
    import quick

    from stepdistill.training import Draw

    (tmp_path / "prompts.txt").write_text("a prompt\nanother prompt\n")
    cfg = quick.config("dmd2", "tiny-sd", tmp_path / "run", f"data.dataset={folders['parquet']}",
                       "data.streaming=true", f"data.prompts={tmp_path / 'prompts.txt'}", "train.batch_size=2",
                       "optim.update_ratio=1", "data.loader_workers=1")
    run = dmd2.setup(cfg)
    s = run.setup
    assert isinstance(s.real, OrderedStream) and s.labelled_real and s.dataset is None
    assert s.real in s.accelerator._custom_objects  # saved and restored with the run's checkpoint
    taken, conditioned = [], []
    real_take, cond = OrderedStream.take, type(s.conditioner).cond
    monkeypatch.setattr(OrderedStream, "take", lambda self, draw: taken.append(real_take(self, draw)) or taken[-1])
    monkeypatch.setattr(type(s.conditioner), "cond", lambda self, labels: conditioned.append(labels.clone())
                        or cond(self, labels))
    for step in range(2):
        logs = dmd2.step(run, Draw(s.accelerator, 2, seed=0, step=step), step)
        assert all(v == v for v in logs.values()), logs
    assert len(taken) == 2 and s.real.state_dict()["rows"] == 4
    for images, labels in taken:
        for x, label in zip(images, labels.tolist()):
            is_colour(x, CAPTIONS.index(s.conditioner.text(label)))
        assert any(len(c) == 4 and torch.equal(c[:2], labels) for c in conditioned)
    generated = [c for c in conditioned if len(c) == 2 and bool((c >= 0).all()) and bool((c < 2).all())]
    assert generated  # the generator's prompts: the prompt file's two


def test_a_streamed_run_resumes_bit_identically_from_its_checkpoint(folders, tmp_path, fresh_accelerate_state):
    """DMD2 with its GAN on a stream, stopped after its first step and resumed: the resumed run reads the rows the
    uninterrupted one read (the stream's place is in the checkpoint), so its student ends bit-identical."""
    import dmd2
    import quick
    from safetensors.torch import load_file

    (tmp_path / "prompts.txt").write_text("a prompt\nanother prompt\n")
    run = (f"data.dataset={folders['parquet']}", "data.streaming=true", f"data.prompts={tmp_path / 'prompts.txt'}",
           "data.loader_workers=0", "train.batch_size=2", "optim.update_ratio=1", "train.max_steps=3",
           "train.checkpoint_every=3", "export.enabled=false")
    dmd2.main(quick.config("dmd2", "tiny-sd", tmp_path / "straight", *run))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dmd2.main(quick.config("dmd2", "tiny-sd", tmp_path / "resumed", *run, "train.time_limit_minutes=0"))
    dmd2.main(quick.config("dmd2", "tiny-sd", tmp_path / "resumed", *run, "resume=latest"))
    a, b = (tmp_path / d / "checkpoints" / "step_00000003" for d in ("straight", "resumed"))
    x, y = load_file(str(a / "student.safetensors")), load_file(str(b / "student.safetensors"))
    assert all(torch.equal(x[k], y[k]) for k in x)
    assert torch.load(b / "custom_checkpoint_0.pkl", weights_only=True) == {"rows": 6, "processes": 1}


@pytest.mark.parametrize("extra,message", [
    (["data.streaming=true"], "data.streaming=true streams data.dataset"),
    (["data.streaming=true", "data.dataset=DATA"], "the generator's prompts come from data.prompts"),
    (["data.streaming=true", "data.dataset=DATA", "data.prompts=PROMPTS", "data.images=DATA"],
     "real images come from one source; data.streaming=true streams data.dataset, so unset data.images"),
])
def test_what_a_stream_cannot_serve_is_refused_at_setup(folders, tmp_path, extra, message, fresh_accelerate_state):
    import dmd2
    import quick

    (tmp_path / "prompts.txt").write_text("a prompt\n")
    extra = [e.replace("DATA", folders["parquet"]).replace("PROMPTS", str(tmp_path / "prompts.txt")) for e in extra]
    cfg = quick.config("dmd2", "tiny-sd", tmp_path / "run", *extra)
    with pytest.raises(ValueError, match=message):
        dmd2.setup(cfg)


def test_msd_refuses_a_stream_for_its_students_real_images(folders, tmp_path, fresh_accelerate_state):
    import msd
    import quick

    cfg = quick.config("msd", "tiny-sd", tmp_path / "run", f"data.dataset={folders['parquet']}",
                       "data.streaming=true")
    with pytest.raises(ValueError, match="a stream \\(data.streaming=true\\) has no index"):
        msd.setup(cfg)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_warnings_are_not_raised_for_a_clean_stream(folders):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        OrderedStream(StreamedSource(folders["parquet"], want="captions"), 8, label=by_caption).take(_draw(0))


def test_a_folder_of_data_files_is_also_read_by_index_without_streaming(folders):
    """Not only `save_to_disk` folders: a folder of parquet files (what a dataset repository holds) loads through
    `load_dataset` and is read by index like any other."""
    from stepdistill.data.paired import HubDataset, PairedImages

    source = HubDataset(folders["parquet"], want="captions")
    assert source.captions == CAPTIONS
    is_colour(PairedImages(source, 8)[3]["images"], 3)
