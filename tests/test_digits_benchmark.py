import json

import numpy as np
import pytest
import torch

from stepdistill.classifier import DigitsClassifier
from stepdistill.data import DigitsDataset, load_digits_tensors, split_indices
from stepdistill.digits_benchmark import DigitsBenchmark, markdown_table
from stepdistill.io import atomic_dir


def test_digits_split_is_fixed_balanced_and_disjoint():
    held, ref = split_indices("heldout"), split_indices("reference")
    assert len(held) == 1000 and len(ref) == 797 and not set(held) & set(ref)
    _, labels = load_digits_tensors(16, "heldout")
    assert labels.bincount().tolist() == [100] * 10
    np.testing.assert_array_equal(split_indices("heldout"), held)  # deterministic
    item = DigitsDataset(16, "reference")[0]
    assert item["images"].shape == (1, 16, 16) and -1 <= float(item["images"].min()) <= float(item["images"].max()) <= 1


@pytest.fixture(scope="module")
def bench():
    return DigitsBenchmark()


def test_real_heldout_digits_score_at_the_floor(bench):
    x, y = load_digits_tensors(16, "heldout")
    fd_real = bench.score(x, y)
    shuffled = bench.score(x, y[torch.randperm(len(y))])
    assert fd_real["accuracy"] > 0.98 and shuffled["accuracy"] < 0.2
    # Noise images are far from the data; blurred digits lie between.
    noise = bench.score(torch.rand(1000, 1, 16, 16) * 2 - 1, y)
    blurred = bench.score(torch.nn.functional.avg_pool2d(x, 3, 1, 1), y)
    assert fd_real["fd"] < blurred["fd"] < noise["fd"] and fd_real["fd"] < 0.1 * noise["fd"]
    assert abs(fd_real["kid"]) < blurred["kid"] < noise["kid"]
    # Noise covers none of the digits; blurring costs coverage more than fidelity.
    assert fd_real["precision"] > 0.8 and fd_real["recall"] > 0.8 and noise["precision"] < 0.3 and noise["recall"] == 0
    assert blurred["recall"] < fd_real["recall"] - 0.1


def test_recall_sees_a_mode_seeking_set(bench):
    """Real held-out digits of only the most typical styles (half of each class, nearest the class
    mean in the classifier's features), repeated to 1,000: as precise as the full split, far lower recall."""
    x, y = load_digits_tensors(16, "heldout")
    feats, _ = bench.features_and_logits(x)
    keep = []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        d = ((feats[idx] - feats[idx].mean(0)) ** 2).sum(1)
        keep.append(idx[torch.from_numpy(d.argsort()[: len(idx) // 2].copy())].repeat(2))
    keep = torch.cat(keep)
    full, typical = bench.score(x, y), bench.score(x[keep], y[keep])
    assert typical["precision"] >= full["precision"] - 0.02
    assert typical["recall"] < full["recall"] - 0.15


def test_fd2_is_measured_in_the_pooled_third_convolution(bench):
    """FD2's features are the third convolution's activations mean- and max-pooled (128 of them), not FD's
    penultimate ones; real held-out digits sit at its floor and blurring costs it far more, relative to the
    floor, than it costs FD (the stroke statistics that the class-separating last layer discards)."""
    x, y = load_digits_tensors(16, "heldout")
    h = bench.classifier.trunk[:6](x[:50])
    torch.testing.assert_close(bench.classifier.pooled_features(x[:50]),
                               torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))
    assert bench.second.ref_features.shape[1] == 128
    real, blurred = bench.score(x, y), bench.score(torch.nn.functional.avg_pool2d(x, 3, 1, 1), y)
    assert real["fd2"] == pytest.approx(bench.floor()["fd2"]) and real["fd2"] != pytest.approx(real["fd"], rel=0.05)
    assert blurred["fd2"] / real["fd2"] > 2 * blurred["fd"] / real["fd"]


@pytest.mark.slow
def test_resampled_real_sets(bench):
    """Drawing every held-out image once is the floor itself; distinct images of the teacher's
    training set (which holds the reference split) score well below the floor, and i.i.d. draws
    from it (repeats) above those; a split with fewer images of a class than a set needs cannot be
    drawn without replacement."""
    floor = bench.floor()["fd"]
    assert bench.resampled("heldout", 0, replace=False)["fd"] == pytest.approx(floor, rel=1e-6)
    distinct = [bench.resampled("all", seed, replace=False)["fd"] for seed in range(3)]
    iid = [bench.resampled("all", seed, replace=True)["fd"] for seed in range(3)]
    assert max(distinct) < 0.8 * floor and sum(distinct) < sum(iid)
    with pytest.raises(ValueError, match="fewer than 100"):
        bench.resampled("reference", 0, replace=False)


def test_evaluate_reports_mean_std_and_speed(bench):
    x, y = load_digits_tensors(16, "all")

    def real_digits(labels, generator):  # a perfect 'generator': random real digits of each label
        idx = torch.stack([torch.nonzero(y == int(c)).flatten()[torch.randint(0, int((y == c).sum()), (1,),
                           generator=generator)] for c in labels]).flatten()
        return x[idx]

    row = bench.evaluate(real_digits, seeds=[0, 1, 2])
    assert len(row["fd_per_seed"]) == 3 and row["fd_std"] > 0 and row["accuracy"] > 0.98
    assert row["fd"] < 3 * bench.floor()["fd"] and row["seconds_per_image"] > 0
    with pytest.raises(ValueError, match="expected images of shape"):
        bench.score(torch.zeros(10, 3, 16, 16), torch.zeros(10, dtype=torch.long))


def test_classifier_round_trip_and_missing_folder(tmp_path):
    model = DigitsClassifier().eval()
    model.save_pretrained(tmp_path / "clf")
    loaded = DigitsClassifier.from_pretrained(tmp_path / "clf")
    x = torch.randn(4, 1, 16, 16)
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(FileNotFoundError, match="train_classifier"):
        DigitsClassifier.from_pretrained(tmp_path / "missing")


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "a.json").write_text(json.dumps(1))
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as d:
            (d / "a.json").write_text(json.dumps(2))
            raise RuntimeError("crash while saving")
    assert json.loads((target / "a.json").read_text()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers
    with atomic_dir(target) as d:
        (d / "a.json").write_text(json.dumps(3))
    assert json.loads((target / "a.json").read_text()) == 3


def test_markdown_table_prints_every_row_and_marks_the_default():
    row = dict(model="teacher", sampler="dpmpp_2m", nfe=35, fd=0.18297, fd_std=0.0132, kid=0.00012, precision=0.9441,
               recall=0.8979, accuracy=0.996, seconds_per_image=0.0372)
    lines = markdown_table([row | {"default": True}, row | {"model": "dmd2", "nfe": 1}]).splitlines()
    assert lines[0].startswith("| model | sampler | NFE | FD (mean ± std) |") and lines[1].startswith("|---|")
    assert lines[2] == ("| teacher (default) | dpmpp_2m | 35 | 0.183 ± 0.013 | — | 0.0001 | 0.944 | 0.898 | 0.996 | "
                        "37.20 |")  # a row written before FD2
    assert lines[3].startswith("| dmd2 | dpmpp_2m | 1 |") and len(lines) == 4
    fd2 = markdown_table([row | {"fd2": 1.3381, "fd2_std": 0.021}]).splitlines()[2]
    assert fd2 == "| teacher | dpmpp_2m | 35 | 0.183 ± 0.013 | 1.338 ± 0.021 | 0.0001 | 0.944 | 0.898 | 0.996 | 37.20 |"


def test_teacher_rows_come_from_the_committed_table_only_where_it_applies(tmp_path, monkeypatch):
    """"table": the shipped teacher's rows are read (never re-sampled) from a table of the same protocol,
    seeds and rows, their speed timed here; another teacher, other seeds or an older table are measured."""
    from stepdistill import digits_benchmark
    from stepdistill.training import benchmarks
    from stepdistill.training.sections import EvalConfig

    row = dict(fd=0.18, fd_std=0.01, fd_per_seed=[0.17, 0.18, 0.19], kid=-0.01, kid_std=0.001, precision=0.9,
               recall=0.85, accuracy=0.996, seconds_per_image=9.0)
    table = tmp_path / "teacher_digits.json"
    rows = [dict(model="teacher", sampler="ddim", nfe=1, **row), dict(model="teacher", sampler="dpmpp_2m", nfe=35,
                                                                      **row, default=True)]
    table.write_text(json.dumps(dict(n_samples=1000, seeds=[0, 1, 2], rows=rows)))
    wanted = [("ddim", 1), ("dpmpp_2m", 35)]
    assert digits_benchmark.table_rows(wanted, seeds=[0, 1, 2], n_samples=1000, path=table)[1]["fd"] == 0.18
    assert digits_benchmark.table_rows(wanted, seeds=[0, 1], n_samples=1000, path=table) is None
    assert digits_benchmark.table_rows(wanted, seeds=[0, 1, 2], n_samples=500, path=table) is None
    assert digits_benchmark.table_rows([("heun", 7)], seeds=[0, 1, 2], n_samples=1000, path=table) is None
    old = [{k: v for k, v in r.items() if k != "precision"} for r in rows]  # written before precision/recall
    table.write_text(json.dumps(dict(n_samples=1000, seeds=[0, 1, 2], rows=old)))
    assert digits_benchmark.table_rows(wanted, seeds=[0, 1, 2], n_samples=1000, path=table) is None
    assert digits_benchmark.is_shipped_teacher("digits") and not digits_benchmark.is_shipped_teacher(str(tmp_path))
    assert not digits_benchmark.is_shipped_teacher("digits-heldout")  # the control teacher is always measured

    class Bench:
        n_samples = 1000
        measured = 0

        def evaluate(self, fn, seeds):
            Bench.measured += 1
            return dict(row, fd=0.5)

        def seconds_per_image(self, fn):
            return 0.04

    monkeypatch.setattr(benchmarks, "table_rows", lambda wanted, **kw: [dict(r) for r in rows])
    got, source = benchmarks.teacher_rows(EvalConfig(), Bench(), None, None, (1, 16, 16), teacher="digits")
    assert Bench.measured == 0 and source.startswith("table: eval/results/teacher_digits.json")
    assert [(r["sampler"], r["nfe"], r["fd"], r["seconds_per_image"], bool(r.get("default"))) for r in got] == \
        [("ddim", 1, 0.18, 0.04, False), ("dpmpp_2m", 35, 0.18, 0.04, True)]
    got, source = benchmarks.teacher_rows(EvalConfig(), Bench(), None, None, (1, 16, 16), teacher=str(tmp_path))
    assert Bench.measured == 2 and source == "measured in this run" and got[1]["fd"] == 0.5 and got[1]["default"]
    got, _ = benchmarks.teacher_rows(EvalConfig(teacher_rows="measure"), Bench(), None, None, (1, 16, 16),
                                teacher="digits")
    assert Bench.measured == 4 and got[0]["fd"] == 0.5
    assert benchmarks.teacher_rows(EvalConfig(teacher_rows="none"), Bench(), None, None, (1, 16, 16),
                              teacher="digits") == ([], "none")
