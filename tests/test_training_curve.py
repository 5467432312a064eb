"""eval/training_curve.py scores a run's checkpoints with the recipe's own protocol."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "eval"))
import sid  # noqa: E402
import training_curve  # noqa: E402
from stepdistill.config import apply_overrides  # noqa: E402


def test_curve_scores_every_checkpoint_and_matches_the_runs_final_row(digits_like_teacher, tmp_path):
    run, results = tmp_path / "run", tmp_path / "final.json"
    sid.main(apply_overrides(sid.SiDConfig(), [
        f"model.teacher={digits_like_teacher}", f"train.output_dir={run}", "train.batch_size=4",
        "train.max_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=0", "train.sample_every=1000",
        "optim.warmup_steps=0", "eval.seeds=[0]", "eval.teacher_rows=false", f"eval.results={results}",
        "export.enabled=false"]))
    curve = training_curve.main([str(run), "--out", str(tmp_path / "curve"), "--seeds", "0"])
    assert [r["step"] for r in curve["rows"]] == [1, 2]
    final = json.loads(results.read_text())["rows"][0]
    assert curve["rows"][-1]["fd"] == pytest.approx(final["fd"], rel=1e-6)  # EMA weights, same seeds
    assert curve["rows"][0]["fd"] != curve["rows"][1]["fd"]
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        training_curve.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
