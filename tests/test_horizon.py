"""The time-budgeted schedule: the loop fits the run's horizon to its time limit from the speed of its first
steps, decaying learning rates reach zero there on any machine, and checkpoints carry the fit."""

import json
import types
import warnings

import pytest
import torch

from stepdistill.training import make_optimizer
from stepdistill.training.horizon import MARGIN, SKIP_STEPS, TIMED_STEPS, Horizon


def _factors(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_match_diffusers_while_the_horizon_is_max_steps(schedule):
    """Unfitted, the schedules are diffusers' `get_scheduler` ones (what the recorded runs used)."""
    from diffusers.optimization import get_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    ours = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), warmup_steps=3, schedule=schedule,
                          total_steps=Horizon(20))
    theirs_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    theirs = get_scheduler(name, theirs_opt, num_warmup_steps=3, num_training_steps=20)
    assert _factors(*reversed(ours), 21) == pytest.approx(_factors(theirs, theirs_opt, 21), abs=1e-12)


def test_a_fitted_horizon_moves_the_end_of_the_decay_for_every_update_ratio():
    """Fitted mid-run, both of DMD2's rates reach zero at the new horizon: the fake score's at its step
    `total`, the generator's (one update every 5 steps) at its step ceil(total / 5)."""
    horizon = Horizon(1000)
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt_f, sched_f = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=horizon)
    opt_g, sched_g = make_optimizer([q], lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=horizon,
                                    steps_per_update=5)
    horizon.fit(done=0, seconds_per_step=1.0, seconds_left=100 / MARGIN + 0.5)
    assert horizon.total == 100
    f = _factors(sched_f, opt_f, 101)
    g = _factors(sched_g, opt_g, 21)
    assert f[50] == pytest.approx(0.5) and f[100] == pytest.approx(0.0, abs=1e-12) and f[99] > 0
    assert g[10] == pytest.approx(0.5) and g[20] == pytest.approx(0.0, abs=1e-12) and g[19] > 0


def test_the_loop_moves_the_horizon_earlier_when_steps_slow_down(tmp_path, monkeypatch, fresh_accelerate_state):
    """Steps that take 0.25 s until step 100 and 0.4 s after: a refit moves the horizon earlier, the run
    still ends at it within the limit, and the rate never rises."""
    from accelerate import Accelerator

    from stepdistill.training import loop
    from stepdistill.training.sections import TrainConfig

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: clock.now))
    horizon = Horizon(10_000)
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=horizon)
    lrs, fits = [], []

    def step_fn(draw, step):
        clock.now += 0.25 if step < 100 else 0.4
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        fits.append(horizon.total)
        return {"loss": 1.0}

    train = TrainConfig(max_steps=10_000, time_limit_minutes=1.0, output_dir=str(tmp_path), checkpoint_every=10_000,
                        sample_every=10_000, batch_size=1)
    done = loop.train_loop(Accelerator(cpu=True), train, name="t", start_step=0, start_time=0.0, step_fn=step_fn,
                           save_samples=lambda path: None, decaying=True, horizon=horizon)
    assert done == horizon.total < fits[SKIP_STEPS + TIMED_STEPS] and clock.now <= 60
    assert all(a >= b for a, b in zip(fits[SKIP_STEPS + TIMED_STEPS:], fits[SKIP_STEPS + TIMED_STEPS + 1:]))
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.05


def test_fit_arithmetic_and_restore():
    h = Horizon(1000)
    assert h.fit(done=55, seconds_per_step=0.5, seconds_left=100.0) == 55 + int(MARGIN * 200)
    assert Horizon(100).fit(done=55, seconds_per_step=0.5, seconds_left=1e6) == 100  # never past max_steps
    assert Horizon(100).fit(done=55, seconds_per_step=0.5, seconds_left=-3.0) == 56  # at least one more step
    assert h.fit(done=100, seconds_per_step=1.0, seconds_left=100.0) == 100 + int(MARGIN * 100)  # earlier
    assert h.fit(done=150, seconds_per_step=0.2, seconds_left=100.0) == 150 + int(MARGIN * 500)  # and later
    assert h.fit(done=200, seconds_per_step=0.2, seconds_left=92.0) == 150 + int(MARGIN * 500)  # not by < 2%
    assert h.anchors == [[150, 197]]  # the later move (earlier ones need no anchor: the rate only falls)
    resumed = Horizon(1000)
    resumed.restore(json.loads(json.dumps(h.state())))
    assert resumed.state() == h.state()
    untouched = Horizon(1000)
    untouched.restore(Horizon(1000).state())
    assert not untouched.fitted
    moved = Horizon(5000)  # resumed at step 300 with a new max_steps or time limit: moved there, to be refitted
    moved.restore(h.state(), done=300, refit=True)
    assert moved.total == 5000 and not moved.fitted and moved.anchors == h.anchors + [[300, h.total]]


def _rates(horizon, schedule="cosine", warmup=0, steps=None, moves=()):
    """The rates of an optimiser on `horizon`, moving it to `steps` at each (step, steps) of `moves`."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), warmup_steps=warmup, schedule=schedule,
                                total_steps=horizon)
    moves, out = dict(moves), []
    for k in range(steps):
        if k in moves:
            horizon.move(k, moves[k])
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_horizon_moved_during_the_warm_up_is_simply_the_new_horizon(schedule):
    moved = _rates(Horizon(200), schedule, warmup=50, steps=401, moves=[(30, 400)])
    assert moved == pytest.approx(_rates(Horizon(400), schedule, warmup=50, steps=401), abs=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_horizon_moved_later_during_the_decay_never_raises_the_rate(schedule):
    """Lengthened at step 100 of a decay to 200: the rate decays on from the value it reached, to zero at the new
    horizon; shortened again later, it still never rises."""
    rates = _rates(Horizon(200), schedule, warmup=20, steps=501, moves=[(100, 400), (300, 350), (340, 500)])
    before = _rates(Horizon(200), schedule, warmup=20, steps=101)
    assert rates[:101] == pytest.approx(before, abs=1e-12)
    decay = rates[20:]
    assert all(a >= b - 1e-12 for a, b in zip(decay, decay[1:]))
    assert rates[101] == pytest.approx(rates[100], rel=0.05) and rates[499] > 0 and rates[500] == pytest.approx(0.0)


def test_the_loop_moves_the_horizon_later_when_steps_speed_up(tmp_path, monkeypatch, fresh_accelerate_state):
    """Steps at 0.5 s for the first window, then 0.25 s (the measured `make demo`: 0.73 s, then 0.36): the run
    lengthens its horizon and uses its minute instead of half of it, with a rate that never rises."""
    from accelerate import Accelerator

    from stepdistill.training import loop
    from stepdistill.training.sections import TrainConfig

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: clock.now))
    horizon = Horizon(10_000)
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=horizon)
    lrs = []

    def step_fn(draw, step):
        clock.now += 0.5 if step < SKIP_STEPS + TIMED_STEPS else 0.25
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        return {"loss": 1.0}

    train = TrainConfig(max_steps=10_000, time_limit_minutes=1.0, output_dir=str(tmp_path), checkpoint_every=10_000,
                        sample_every=10_000, batch_size=1)
    done = loop.train_loop(Accelerator(cpu=True), train, name="t", start_step=0, start_time=0.0, step_fn=step_fn,
                           save_samples=lambda path: None, decaying=True, horizon=horizon)
    first_fit = horizon.anchors[0][1]  # the horizon before the first lengthening
    assert first_fit < 0.8 * done and done == horizon.total and 0.9 * 60 <= clock.now <= 60
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.05


def test_the_loop_fits_the_time_limit_ends_the_decay_there_and_checkpoints_the_fit(tmp_path, monkeypatch,
                                                                                  fresh_accelerate_state):
    """A machine at 0.25 s a step with a 1-minute limit and max_steps=10,000: the loop times steps 5..54,
    fits the rest of the minute, refits as it goes, stops at the horizon with the cosine at zero (not cut by
    the clock), and the checkpoint there records the fit for a resume."""
    from accelerate import Accelerator

    from stepdistill.checkpointing import checkpoint_dirs, checkpoint_info
    from stepdistill.training import loop
    from stepdistill.training.sections import TrainConfig

    clock = types.SimpleNamespace(now=0.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=lambda: clock.now))
    accelerator = Accelerator(cpu=True)
    horizon = Horizon(10_000)
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=horizon)
    lrs = []

    def step_fn(draw, step):
        clock.now += 0.25
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        return {"loss": 1.0}

    train = TrainConfig(max_steps=10_000, time_limit_minutes=1.0, output_dir=str(tmp_path), checkpoint_every=10_000,
                        sample_every=10_000, batch_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = loop.train_loop(accelerator, train, name="t", start_step=0, start_time=0.0, step_fn=step_fn,
                               save_samples=lambda path: None, decaying=True, horizon=horizon)
    assert not [w for w in caught if "limit stopped" in str(w.message)]  # the decay finished
    first_fit = SKIP_STEPS + TIMED_STEPS + int(MARGIN * (60 - 0.25 * (SKIP_STEPS + TIMED_STEPS)) / 0.25)
    # at a steady speed the refits every REFIT_EVERY steps keep the first fit (the margin's slack is < 2%)
    assert first_fit == horizon.total == done and clock.now <= 60
    assert horizon.seconds_per_step == pytest.approx(0.25)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-4) and lrs[done // 2] == pytest.approx(0.5, abs=0.01)
    (last,) = checkpoint_dirs(tmp_path)
    assert checkpoint_info(last)["step"] == done and checkpoint_info(last)["horizon"] == horizon.state()
    assert checkpoint_info(last)["fused_losses"]["mode"] == "auto"  # which implementation of each loss ran
    logged = [json.loads(line) for line in (tmp_path / "log_rank0.jsonl").read_text().splitlines()]
    assert {"horizon": horizon.state()} in logged

