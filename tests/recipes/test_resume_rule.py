"""The resume rule (`stepdistill.training.resume`), held for every registered recipe: settings that may change
on resume (the learning rates) reach the optimisers, read back from the next checkpoint; settings that define
the run are refused before any work with both values; the run's config.yaml keeps the first config and records
the resume; every checkpoint keeps the config it was written under."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import quick
from registry import RECIPES
from stepdistill.training import cli

NAMES = sorted(RECIPES)
# the quick tier holds one recipe of each optimiser layout (two optimisers, one); the others run in the full suite
QUICK = ("dmd2", "consistency_distill")
EVERY = [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]


def _lr_keys(cfg) -> list[str]:
    return [k for k in vars(cfg.optim) if k == "lr" or (k.startswith("lr_") and k != "lr_schedule")]


def _constant(cfg) -> tuple[str, ...]:
    return ("optim.lr_schedule=constant",) if hasattr(cfg.optim, "lr_schedule") else ()


def _optimizer_lrs(checkpoint: Path) -> set[float]:
    files = sorted(checkpoint.glob("optimizer*.bin"))
    assert files, f"no optimiser state in {checkpoint}"
    return {round(g["lr"], 12) for f in files for g in torch.load(f, weights_only=True)["param_groups"]}


@pytest.mark.parametrize("name", EVERY)
def test_resume_applies_new_learning_rates_and_records_them(name, tiny_teachers, tmp_path):
    info, out = RECIPES[name], tmp_path / "run"
    teacher = tiny_teachers[info.tiny_teacher]
    base = quick.config(name, teacher, out)
    fixed = (*_constant(base), "export.enabled=false")
    keys = _lr_keys(base)
    old = {k: getattr(base.optim, k) for k in keys}
    new = {k: 1e-6 * (i + 2) for i, k in enumerate(keys)}  # distinct from each other and from the old rates
    module = info.module()
    module.main(quick.config(name, teacher, out, "train.max_steps=1", *fixed))
    first = _optimizer_lrs(out / "checkpoints" / "step_00000001")
    assert first <= {round(v, 12) for v in old.values()}
    used = [k for k in keys if round(old[k], 12) in first]  # MSD's lr_tsm has no optimiser without TSM steps
    module.main(quick.config(name, teacher, out, "train.max_steps=2", "resume=latest", *fixed,
                             *(f"optim.{k}={v}" for k, v in new.items())))
    second = out / "checkpoints" / "step_00000002"
    assert _optimizer_lrs(second) == {round(new[k], 12) for k in used}
    kept = yaml.safe_load((second / "config.yaml").read_text())
    assert {k: kept["optim"][k] for k in keys} == new
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert {k: record["optim"][k] for k in keys} == old  # the run's first config is kept ...
    (resume,) = record["resumes"]  # ... and the resume appended
    assert resume["step"] == 1 and resume["checkpoint"].endswith("step_00000001")
    for k in keys:
        assert resume["changed"][f"optim.{k}"] == {"old": old[k], "new": new[k]}
    assert resume["changed"]["train.max_steps"] == {"old": 1, "new": 2}


def test_a_change_that_defines_the_run_is_refused_with_both_values(tiny_teachers, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    argv = quick.overrides(tiny_teachers["digits"], out, "export.enabled=false")
    module = RECIPES["dmd2"].module()
    module.main(quick.config("dmd2", tiny_teachers["digits"], out, "train.max_steps=1", "export.enabled=false"))

    def no_setup(cfg):
        raise AssertionError("setup ran before the resume was checked")

    monkeypatch.setattr(module, "setup", no_setup)
    for change, old in (("loss.real_guidance=3.5", "1.0"), ("train.batch_size=8", "4"), ("train.seed=3", "0"),
                        ("optim.update_ratio=2", "5")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            cli(module, RECIPES["dmd2"].config_class(), [*argv, "train.max_steps=2", "resume=latest", change])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip()
        key, value = change.split("=")
        assert err.count("\n") == 0 and f"{key}: checkpoint {old}, now {value}" in err, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001"]
    assert "resumes" not in yaml.safe_load((out / "config.yaml").read_text())


def test_the_rule_splits_keys_as_documented():
    from stepdistill.training.resume import may_change

    for key in ("optim.lr_generator", "optim.betas", "optim.lr_schedule", "train.max_steps", "train.time_limit_minutes",
                "eval.seeds", "export.hub_repo", "train.log_every"):
        assert may_change(key), key
    for key in ("optim.update_ratio", "loss.real_guidance", "model.teacher", "data.prompts", "train.seed",
                "train.batch_size", "train.mixed_precision", "train.ema_decay", "model.generator_timesteps"):
        assert not may_change(key), key


def test_a_resumed_rate_follows_its_schedule_at_the_restored_step():
    """The new base rate times the schedule's factor at the checkpoint's step, and the scheduler's base too
    (accelerate's load_state brings back the old ones)."""
    from types import SimpleNamespace

    from stepdistill.training.horizon import lr_factor
    from stepdistill.training.resume import apply_settings
    from stepdistill.training.setup import make_optimizer

    w = torch.nn.Parameter(torch.ones(3))
    opt, sched = make_optimizer([w], lr=1e-3, betas=(0.0, 0.99), schedule="cosine", total_steps=10, warmup_steps=2)
    for _ in range(5):
        w.grad = torch.ones(3)
        opt.step()
        sched.step()
    state = opt.state_dict(), sched.state_dict()
    opt2, sched2 = make_optimizer([w], lr=4e-4, betas=(0.9, 0.999), weight_decay=0.1, schedule="cosine",
                                  total_steps=10, warmup_steps=2)
    opt2.load_state_dict(state[0])
    sched2.load_state_dict(state[1])
    assert opt2.param_groups[0]["betas"] == (0.0, 0.99)  # what load_state leaves
    apply_settings(SimpleNamespace(_optimizers=[SimpleNamespace(optimizer=opt2)]))
    factor = lr_factor("cosine", warmup_steps=2, total_steps=lambda: 10)(5)
    group = opt2.param_groups[0]
    assert group["lr"] == pytest.approx(4e-4 * factor) and sched2.base_lrs == [4e-4]
    assert group["betas"] == (0.9, 0.999) and group["weight_decay"] == 0.1
    w.grad = torch.ones(3)
    opt2.step()
    sched2.step()
    assert group["lr"] == pytest.approx(4e-4 * lr_factor("cosine", warmup_steps=2, total_steps=lambda: 10)(6))


def test_a_fitted_horizon_is_kept_unless_max_steps_or_the_time_limit_change(tmp_path):
    from accelerate import Accelerator

    from stepdistill.checkpointing import save_checkpoint
    from stepdistill.training.horizon import Horizon
    from stepdistill.training.sections import TrainConfig
    from stepdistill.training.setup import restore

    accelerator = Accelerator(cpu=True)
    fitted = Horizon(100, steps=40, seconds_per_step=1.0, fitted_at_step=5)
    path = save_checkpoint(accelerator, tmp_path, 5, info={"horizon": fitted.state()})
    for changed, expected in (({}, 40), ({"train.max_steps": (100, 200)}, 200),
                              ({"train.time_limit_minutes": (10.0, None)}, 200), ({"optim.lr": (1.0, 2.0)}, 40)):
        horizon = Horizon(200)
        assert restore(accelerator, path, output_dir=tmp_path, config=TrainConfig(), horizon=horizon,
                       changed=changed) == 5
        assert horizon.total == expected, changed
        if expected == 200:  # moved later at the checkpoint's step: the old horizon is anchored there
            assert horizon.anchors == [[5, 40]]


def test_a_run_resumed_without_its_time_limit_decays_on_from_its_rate_to_max_steps(tmp_path):
    """A time-limited run fitted its horizon to 40 of 100 steps and stopped at 30; resumed with
    `train.time_limit_minutes=null`, it trains to max_steps, its rate going on from the value it reached (not
    jumping back up to the 100-step schedule's) and reaching zero at step 100."""
    from accelerate import Accelerator

    from stepdistill.checkpointing import save_checkpoint
    from stepdistill.training.horizon import Horizon
    from stepdistill.training.sections import TrainConfig
    from stepdistill.training.setup import make_optimizer, restore

    def rates(horizon, start, stop):
        w = torch.nn.Parameter(torch.ones(1))
        opt, sched = make_optimizer([w], lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=horizon,
                                    warmup_steps=10)
        for _ in range(start):
            sched.step()
        return [(sched.get_last_lr()[0], sched.step())[0] for _ in range(start, stop)]

    fitted = Horizon(100, steps=40, seconds_per_step=1.0, fitted_at_step=5)
    before = rates(fitted, 0, 31)
    path = save_checkpoint(Accelerator(cpu=True), tmp_path, 30, info={"horizon": fitted.state()})
    horizon = Horizon(100)
    restore(Accelerator(cpu=True), path, output_dir=tmp_path, config=TrainConfig(), horizon=horizon,
            changed={"train.time_limit_minutes": (10.0, None)})
    after = rates(horizon, 30, 101)
    assert after[0] == pytest.approx(before[30]) and after[0] < rates(Horizon(100), 30, 31)[0]
    assert all(a >= b for a, b in zip(after, after[1:])) and after[-1] == pytest.approx(0.0) and after[-2] > 0
