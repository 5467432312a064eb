"""A run's folder holds one run and only its own data: the run lock refuses a second live run and takes over a
dead one's; cached teacher outputs are keyed by the teacher, the data and the solver (another teacher or
degradation solves again, `overwrite` removes them); an export killed half-way leaves no folder behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import quick
from registry import RECIPES
from stepdistill.checkpointing import claim_output_dir

ROOT = Path(__file__).resolve().parents[2]


# -- one run per folder ------------------------------------------------------------------------------------------

def test_a_second_run_in_a_live_runs_folder_is_refused(tiny_teachers, tmp_path, capsys):
    """A run holds its folder: another run started there exits 2 with one line naming the holder, and writes
    nothing."""
    from stepdistill import run_lock

    from stepdistill.training import cli

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / run_lock.LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                          "since": 0}))
        argv = quick.overrides(tiny_teachers["digits"], out, "train.max_steps=1", "export.enabled=false")
        with pytest.raises(SystemExit) as stop:
            cli(RECIPES["dmd2"].module(), RECIPES["dmd2"].config_class(), argv)
    finally:
        holder.kill()
        holder.wait()
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error:") and f"pid {holder.pid}" in line and "in use by another run" in line
    assert sorted(p.name for p in out.iterdir()) == [run_lock.LOCK_FILE]


def test_a_dead_runs_lock_is_taken_over_and_a_finished_run_leaves_none(tiny_teachers, tmp_path):
    from stepdistill import run_lock

    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.mkdir()
    (out / run_lock.LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="took over a stale run lock"):
        RECIPES["dmd2"].module().main(quick.config("dmd2", tiny_teachers["digits"], out, "train.max_steps=1",
                                                   "export.enabled=false"))
    assert (out / "checkpoints" / "step_00000001").is_dir()
    assert not (out / run_lock.LOCK_FILE).exists()


def test_a_lock_from_another_host_is_refused(tmp_path):
    from stepdistill import run_lock

    (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere"}))
    with pytest.raises(run_lock.FolderInUse, match="on host elsewhere"):
        run_lock.acquire(tmp_path)


@pytest.mark.slow
def test_two_runs_started_at_once_one_succeeds_one_is_refused(tiny_teachers, tmp_path):
    """The data-losing case: both used to exit 0 with interleaved logs and only one run's checkpoints."""
    out = tmp_path / "run"
    args = [sys.executable, str(ROOT / "recipes" / "dmd2.py"),
            *quick.overrides(tiny_teachers["digits"], out, "train.max_steps=3", "export.enabled=false")]
    runs = [subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = sorted(r.wait(timeout=600) for r in runs)
    errors = [r.stderr.read() for r in runs]
    assert codes == [0, 2], errors
    assert any("in use by another run" in e for e in errors)
    log = [json.loads(x) for x in (out / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "step" in r] == [0, 1, 2]


# -- keyed caches --------------------------------------------------------------------------------------------------

def _cache(out: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    (path,) = [p for p in out.rglob(f"{name}*.safetensors")]
    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


def test_trajectories_are_solved_again_for_another_teacher(tiny_teachers, tmp_path, capsys):
    """consistency_distill with teacher trajectories, then `overwrite` with another teacher in the same folder:
    the trajectories are the new teacher's (they used to be the first teacher's)."""
    from stepdistill.fingerprints import weights_digest
    from stepdistill.teachers import load_teacher
    from stepdistill.tiny import build_tiny_class_conditional

    other = build_tiny_class_conditional(tmp_path / "other_teacher", seed=1)
    module = RECIPES["consistency_distill"].module()
    extra = ("loss.states=teacher", "loss.trajectories=2", "loss.levels=8")
    module.setup(quick.config("consistency_distill", tiny_teachers["digits"], tmp_path / "run", *extra))
    first = _cache(tmp_path / "run", "trajectories")[1]["states"]
    capsys.readouterr()
    module.setup(quick.config("consistency_distill", other, tmp_path / "run", *extra))
    assert "solved with other settings" in capsys.readouterr().out
    meta, tensors = _cache(tmp_path / "run", "trajectories")
    assert not torch.equal(tensors["states"][:, 1:], first[:, 1:])  # the start (noise) is the same draw
    assert meta["teacher_root"] == str(other)
    assert meta["teacher_weights"] == weights_digest(load_teacher(other).net)


def test_tadsr_pairs_are_solved_again_for_another_degradation(tiny_teachers, tmp_path):
    module = RECIPES["tadsr"].module()
    extra = (*quick.SMALL["tadsr"], "train.overwrite=true")
    module.setup(quick.config("tadsr", tiny_teachers["sr"], tmp_path / "run", *extra))
    before = _cache(tmp_path / "run", "teacher_outputs")[1]
    module.setup(quick.config("tadsr", tiny_teachers["sr"], tmp_path / "run", *extra, "data.degradation_noise=20"))
    meta, after = _cache(tmp_path / "run", "teacher_outputs")
    assert meta["data.degradation_noise"] == "20.0"
    assert not torch.equal(before["x"], after["x"])


def test_a_matching_cache_is_reused_and_overwrite_removes_caches(tmp_path):
    from stepdistill.data.ode_pairs import load_cached, save_cached

    class Main:
        is_main_process = True

    cache = tmp_path / "cache" / "pairs.safetensors"
    save_cached(cache, {"teacher_weights": "a"}, {"x": torch.ones(2)}, Main())
    said = []
    assert torch.equal(load_cached(cache, {"teacher_weights": "a"}, say=said.append)["x"], torch.ones(2))
    assert load_cached(cache, {"teacher_weights": "b"}, say=said.append) is None
    assert said == [f"{cache} was solved with other settings (teacher_weights: a -> b): solving again"]
    cache.write_bytes(cache.read_bytes()[:20])  # cut: read as missing, with a word
    assert load_cached(cache, {"teacher_weights": "a"}, say=said.append) is None and "unreadable" in said[-1]
    (tmp_path / "checkpoints" / "step_00000001").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000001" / "step.json").write_text('{"step": 1}')
    claim_output_dir(tmp_path, resuming=False, overwrite=True, is_main=True)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "checkpoints" / "step_00000001").exists()


def test_a_killed_exports_temporary_folder_is_removed_with_the_run_folder_claimed(tmp_path):
    litter = tmp_path / ".pipeline.tmp-abc123"
    (litter / "unet").mkdir(parents=True)
    keep = tmp_path / "pipeline"
    keep.mkdir()
    claim_output_dir(tmp_path, resuming=True, overwrite=False, is_main=True)
    assert not litter.exists() and keep.is_dir()


# -- no local paths ----------------------------------------------------------------------------------------------

@pytest.mark.slow  # the quick tier checks the text-to-image export's card (tests/test_dmd2_recipe.py)
def test_the_export_names_no_path_of_this_machine(tiny_teachers, tmp_path, monkeypatch):
    """The model card's training command used to quote `model.teacher=/abs/...` and `train.output_dir=/abs/...`
    verbatim; `export.hub_repo` would have uploaded them."""
    from stepdistill.local_paths import files_with_local_paths

    out = tmp_path / "run"
    argv = quick.overrides(tiny_teachers["digits"], out, "train.max_steps=1")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "recipes" / "dmd2.py"), *argv])
    RECIPES["dmd2"].module().main(quick.config("dmd2", tiny_teachers["digits"], out, "train.max_steps=1"))
    card = (out / "pipeline" / "README.md").read_text()
    assert "accelerate launch recipes/dmd2.py model.teacher=<local>/tiny train.output_dir=<local>/run" in card
    assert files_with_local_paths(out / "pipeline") == {}


# -- damaged checkpoints -----------------------------------------------------------------------------------------

def test_resume_latest_passes_over_a_damaged_checkpoint_and_names_the_file(tiny_teachers, tmp_path):
    from stepdistill.checkpointing import resolve_resume

    out = tmp_path / "run"
    module = RECIPES["dmd2"].module()
    base = ("train.checkpoint_every=1", "train.keep_checkpoints=0", "export.enabled=false")
    module.main(quick.config("dmd2", tiny_teachers["digits"], out, "train.max_steps=2", *base))
    cut = out / "checkpoints" / "step_00000002" / "student.safetensors"
    cut.write_bytes(cut.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{cut}: truncated or not a safetensors file.*undamaged ones in .*"
                                         "step_00000001"):
        resolve_resume(str(cut.parent), out)
    with pytest.warns(UserWarning, match=f"passed over damaged {cut}.*resuming from .*step_00000001"):
        module.main(quick.config("dmd2", tiny_teachers["digits"], out, "train.max_steps=3", "resume=latest", *base))
    log = [json.loads(x) for x in (out / "log_rank0.jsonl").read_text().splitlines()]
    assert [r["from_step"] for r in log if "resume" in r] == [1]
    assert [r["step"] for r in log if "step" in r] == [0, 1, 2]
    (out / "checkpoints" / "step_00000001" / "optimizer.bin").write_bytes(b"cut")
    (out / "checkpoints" / "step_00000003" / "step.json").write_text("{")
    (out / "checkpoints" / "step_00000002" / "step.json").unlink()  # incomplete: not a checkpoint at all
    with pytest.raises(ValueError, match="every checkpoint .* is damaged .*step.json: unreadable.*optimizer.bin"):
        resolve_resume("latest", out)
