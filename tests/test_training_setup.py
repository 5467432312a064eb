"""Optimiser construction shared by the recipes: warm-up, then constant or decaying learning rates."""

import pytest
import torch

from stepdistill.training import make_optimizer


def _lrs(schedule, steps, **kw):
    p = torch.nn.Parameter(torch.zeros(2))
    opt, sched = make_optimizer([p], lr=1.0, betas=(0.9, 0.999), schedule=schedule, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones_like(p)
        opt.step()
        sched.step()
    return out


def test_warmup_then_constant():
    assert _lrs("constant", 5, warmup_steps=2) == pytest.approx([0.0, 0.5, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("schedule, halfway", [("linear", 0.5), ("cosine", 0.5)])
def test_decays_reach_zero_at_total_steps(schedule, halfway):
    lrs = _lrs(schedule, 11, warmup_steps=0, total_steps=10)
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(halfway)
    assert lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_bad_schedules_fail_clearly():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        make_optimizer(p, lr=1.0, betas=(0.9, 0.999), schedule="step")
    with pytest.raises(ValueError, match="total_steps > warmup_steps"):
        make_optimizer(p, lr=1.0, betas=(0.9, 0.999), schedule="cosine", total_steps=5, warmup_steps=5)


@pytest.mark.parametrize("keep, expected", [(2, [3, 4]), (0, [1, 2, 3, 4])])
def test_checkpoint_rotation_keeps_the_newest(tmp_path, keep, expected):
    from accelerate import Accelerator

    from stepdistill.checkpointing import checkpoint_dirs, save_checkpoint

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(2, 2))
    for step in (1, 2, 3, 4):
        save_checkpoint(accelerator, tmp_path, step, keep=keep)
    assert [int(p.name.split("_")[1]) for p in checkpoint_dirs(tmp_path)] == expected



@pytest.mark.parametrize("native", [True, False])
def test_auto_mixed_precision_is_bf16_only_where_native(monkeypatch, native, fresh_accelerate_state):
    """`train.mixed_precision=auto` turns bf16 autocast on only where the CPU runs bf16 in hardware
    (emulated bf16 is slower than fp32); explicit choices pass through."""
    from stepdistill import distributed

    for flag in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: native, raising=False)
    assert distributed.resolve_mixed_precision("auto", "cpu") == ("bf16" if native else "no")
    assert distributed.resolve_mixed_precision("no", "cpu") == "no"
    assert distributed.resolve_mixed_precision("bf16", "cpu") == "bf16"
    assert distributed.make_accelerator(mixed_precision="auto").mixed_precision == ("bf16" if native else "no")


def test_ema_follows_the_weights_at_its_decay(fresh_accelerate_state):
    """`make_ema(decay=0.9)`: on weights rising by 1 a step, the EMA settles 0.9 / (1 - 0.9) = 9 behind
    (diffusers' EMAModel warms its decay up to the given one over the first steps)."""
    from stepdistill.distributed import make_accelerator
    from stepdistill.training import make_ema

    p = torch.nn.Parameter(torch.zeros(3))
    ema = make_ema([p], 0.9, make_accelerator(mixed_precision="no"))
    for _ in range(300):
        with torch.no_grad():
            p.add_(1.0)
        ema.step([p])
    lag = p.detach() - ema.shadow_params[0]
    torch.testing.assert_close(lag, torch.full((3,), 9.0), rtol=1e-3, atol=0)
    assert make_ema([p], None, make_accelerator(mixed_precision="no")) is None


def test_final_student_runs_in_float32_after_bf16_training(fresh_accelerate_state):
    """A module prepared under bf16 autocast computes in bf16; `finish` evaluates and exports it with
    that autocast removed, so the benchmark measures the float32 weights a user loads."""
    from stepdistill.distributed import make_accelerator

    torch.manual_seed(0)
    accelerator = make_accelerator(mixed_precision="bf16")
    net = torch.nn.Linear(16, 16)
    x = torch.randn(4, 16)
    exact = net(x)
    prepared = accelerator.prepare(net)
    assert not torch.equal(prepared(x), exact)  # bf16 inside the patched forward
    plain = accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    torch.testing.assert_close(plain(x), exact, rtol=0, atol=0)


def test_real_images_come_from_the_data_the_teacher_was_trained_on(digits_like_teacher, sr_teacher, tmp_path):
    """A teacher's train_config.yaml names its embedded data; a teacher folder without that record is never given
    the digits (or the SR patches) by its shape: it needs data.images."""
    import shutil

    from stepdistill.data.digits import DigitsDataset
    from stepdistill.data.embedded import embedded_dataset, trained_on
    from stepdistill.data.patches import PatchDataset
    from stepdistill.degradations import Degradation
    from stepdistill.training.sections import DataConfig
    from stepdistill.training.setup import setup_data
    from stepdistill.teachers import load_teacher

    assert (trained_on(digits_like_teacher), trained_on(sr_teacher)) == ("digits", "patches")
    _, _, data = setup_data(DataConfig(), load_teacher(digits_like_teacher), "cpu", need_images=True)
    assert isinstance(data, DigitsDataset)
    assert isinstance(embedded_dataset(sr_teacher, 16, Degradation(4), DataConfig(patches=8)), PatchDataset)
    own = tmp_path / "own"
    shutil.copytree(digits_like_teacher, own)
    (own / "train_config.yaml").unlink()
    with pytest.raises(ValueError, match="set data.images"):
        setup_data(DataConfig(), load_teacher(own), "cpu", need_images=True)


def test_the_weights_digest_reads_tensors_above_2_to_the_24_elements():
    """SD 1.5's largest convolutions hold 29,491,200 weights: the digest's float32 sample positions must stay in
    range (they rounded up to the length, an IndexError at the setup of every SD-class run)."""
    from stepdistill.fingerprints import weights_digest

    module = torch.nn.Module()
    module.register_buffer("big", torch.arange(29_491_200, dtype=torch.int32))
    small = torch.nn.Linear(3, 2)
    assert len(weights_digest(module)) == 16
    assert weights_digest(small) == weights_digest(small)
