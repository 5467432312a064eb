"""`stepdistill.evaluation.run_scores` (experiments/digits_benchmark/training_curve.py and precision_recall.py)
scores a run's checkpoints with the recipe's own protocol."""

import json
from pathlib import Path

import pytest
import torch

import sid
from stepdistill.config import apply_overrides
from stepdistill.evaluation import run_scores


def _sid_run(teacher, run: Path, results: Path) -> None:
    sid.main(apply_overrides(sid.SiDConfig(), [
        f"model.teacher={teacher}", f"train.output_dir={run}", "train.batch_size=4",
        "train.max_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=0", "train.sample_every=1000",
        "optim.warmup_steps=0", "eval.seeds=[0]", "eval.teacher_rows=none", f"eval.results={results}",
        "export.enabled=false"]))


@pytest.mark.slow
def test_curve_scores_every_checkpoint_and_matches_the_runs_final_row(digits_like_teacher, tmp_path):
    run, results = tmp_path / "run", tmp_path / "final.json"
    _sid_run(digits_like_teacher, run, results)
    curve = run_scores.training_curve(run, tmp_path / "curve", seeds=[0])
    assert [r["step"] for r in curve["rows"]] == [1, 2]
    final = json.loads(results.read_text())["rows"][0]
    assert curve["rows"][-1]["fd"] == pytest.approx(final["fd"], rel=1e-6)  # EMA weights, same seeds
    assert curve["rows"][0]["fd"] != curve["rows"][1]["fd"]
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no complete checkpoint"):
        run_scores.training_curve(tmp_path / "empty", tmp_path / "x")


@pytest.mark.slow
def test_precision_recall_rows_match_the_runs_final_row(digits_like_teacher, tmp_path):
    run, results = tmp_path / "run", tmp_path / "final.json"
    _sid_run(digits_like_teacher, run, results)
    with pytest.raises(ValueError, match="no complete checkpoint"):  # before the teacher's sampling
        run_scores.precision_recall([run, tmp_path / "empty"], tmp_path / "pr", nfe=2)
    out = run_scores.precision_recall([run], tmp_path / "pr", seeds=[0], teacher=str(digits_like_teacher), nfe=2,
                                      guidance=[1.0, 2.0])
    floor, iid, teacher, guided, student = out["rows"]
    final = json.loads(results.read_text())["rows"][0]
    assert student["fd"] == pytest.approx(final["fd"], rel=1e-6) and student["set"] == "step 2"
    assert floor["precision"] > 0.8 and floor["recall"] > 0.8 and iid["recall"] > 0.8
    assert teacher["fd"] != guided["fd"]
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in out["rows"])
    assert json.loads((tmp_path / "pr.json").read_text())["rows"] == out["rows"]


def test_precision_recall_guides_the_teacher_with_cfg(digits_like_teacher):
    """The teacher rows at guidance s sample uncond + s (cond - uncond); at 1 the conditional prediction."""
    from stepdistill.conditioning import ClassConditioner
    from stepdistill.roles import make_real_score
    from stepdistill.teachers import load_teacher

    teacher = load_teacher(digits_like_teacher)
    denoiser = make_real_score(teacher)
    conditioner = ClassConditioner.for_embeddings(teacher.net.config.num_class_embeds)
    g = torch.Generator().manual_seed(0)
    x, t, labels = torch.randn(3, 1, 16, 16, generator=g), torch.tensor([100.0, 500.0, 900.0]), torch.tensor([0, 4, 9])
    with torch.no_grad():
        cond = denoiser(x, t, class_labels=labels)
        uncond = denoiser(x, t, class_labels=torch.full_like(labels, 10))
        torch.testing.assert_close(run_scores.guided(denoiser, 1.0, conditioner)(x, t, labels), cond)
        torch.testing.assert_close(run_scores.guided(denoiser, 1.5, conditioner)(x, t, labels),
                                   uncond + 1.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
