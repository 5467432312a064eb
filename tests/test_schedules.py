import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, EDMEulerScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler)

from stepdistill.schedules import EDM, RectifiedFlow, VPDiscrete, from_scheduler_config, karras_sigmas, time_grid
from stepdistill.time_sampling import DiscreteRange, KarrasRamp, LogNormalSigma, UniformTime

VP_CONFIGS = [
    dict(beta_schedule="linear", prediction_type="epsilon"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction"),
    dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
         rescale_betas_zero_snr=True),
]


@pytest.mark.parametrize("kwargs", VP_CONFIGS)
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler, EulerDiscreteScheduler])
def test_vp_matches_diffusers_add_noise(cls, kwargs):
    scheduler = cls(**kwargs)
    schedule, prediction_type = from_scheduler_config(scheduler.config)
    assert isinstance(schedule, VPDiscrete) and prediction_type == kwargs["prediction_type"]
    x0, eps = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    ref = DDPMScheduler(**kwargs).add_noise(x0, eps, t)
    torch.testing.assert_close(schedule.add_noise(x0, eps, t.float()), ref, atol=2e-6, rtol=1e-5)


def test_vp_fractional_times_interpolate_and_invert():
    schedule, _ = from_scheduler_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)
    t = torch.linspace(0, 999, 97, dtype=torch.float64)
    a, s = schedule.alpha(t), schedule.sigma(t)
    torch.testing.assert_close(a**2 + s**2, torch.ones_like(a))
    assert bool((torch.diff(s / a) > 0).all()), "sigma/alpha must increase with t"
    torch.testing.assert_close(schedule.t_from_ratio(s / a), t, atol=1e-6, rtol=0)


def test_flow_matches_diffusers_scale_noise_with_shift():
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule, prediction_type = from_scheduler_config(scheduler.config)
    assert isinstance(schedule, RectifiedFlow) and prediction_type == "flow" and schedule.shift == 3.0
    scheduler.set_timesteps(8)
    x0, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    for timestep in scheduler.timesteps:
        ref = scheduler.scale_noise(x0, timestep.reshape(1), eps)
        t = timestep.reshape(1) / scheduler.config.num_train_timesteps  # native t is sigma
        torch.testing.assert_close(schedule.add_noise(x0, eps, t), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(schedule.timestep(t), timestep.reshape(1))
    # The uniform grid is SD3's shifted grid, ending at 0 (diffusers' ends with a step from 1/T*shift to 0).
    grid = time_grid(schedule, 8, "uniform")
    u = torch.linspace(1, 0, 9, dtype=torch.float64)
    torch.testing.assert_close(grid, 3 * u / (1 + 2 * u))


def test_edm_config_and_preconditioning():
    schedule, prediction_type = from_scheduler_config(EDMEulerScheduler(sigma_data=0.5).config)
    assert isinstance(schedule, EDM) and prediction_type == "edm"
    sigma = torch.tensor([0.002, 1.0, 80.0])
    torch.testing.assert_close(schedule.c_in(sigma), 1 / torch.sqrt(sigma**2 + 0.25))
    torch.testing.assert_close(schedule.timestep(sigma), torch.log(sigma) / 4)
    scheduler = EDMEulerScheduler(sigma_data=0.5)
    torch.testing.assert_close(schedule.c_in(sigma), scheduler.precondition_inputs(torch.ones(3), sigma))
    torch.testing.assert_close(schedule.timestep(sigma), scheduler.precondition_noise(sigma))


def test_unsupported_configs_are_named():
    with pytest.raises(ValueError, match="prediction_type"):
        from_scheduler_config({"_class_name": "DDPMScheduler", "prediction_type": "x0"})
    with pytest.raises(ValueError, match="time_shift_type"):
        from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True,
                               "time_shift_type": "linear"})


def test_dynamic_shift_is_the_flux_pipelines_at_every_token_count():
    """Flux-dev's scheduler shifts by exp(mu(tokens)); with no token count, the native (largest) resolution's."""
    import math

    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from stepdistill.schedules import flow_shift

    config = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                  max_image_seq_len=4096)
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    for tokens in (16, 256, 1024, 4096):
        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=mu)
        schedule = RectifiedFlow(shift=flow_shift(config, tokens))
        torch.testing.assert_close(scheduler.sigmas[:-1].double(), schedule.shifted(torch.linspace(1.0, 0.25, 4,
                                                                                                   dtype=torch.float64)),
                                   atol=1e-6, rtol=0)
    assert flow_shift(config) == pytest.approx(math.exp(1.15))
    assert from_scheduler_config({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})[0].shift == 3.0


@pytest.mark.parametrize("schedule", [from_scheduler_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2"))[0],
                                      EDM(), RectifiedFlow(shift=3.0)])
@pytest.mark.parametrize("spacing", ["karras", "uniform", "logsnr"])
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_time_grid_every_point_is_a_real_level(schedule, spacing, steps):
    grid = time_grid(schedule, steps, spacing)
    assert len(grid) == steps + 1 and float(grid[0]) == pytest.approx(schedule.t_max) and float(grid[-1]) == 0
    assert bool((torch.diff(grid) < 0).all())
    if steps >= 2:  # the last interval starts well above t_min: no wasted sigma_min -> 0 step
        assert float(grid[-2]) > 5 * schedule.t_min


def test_karras_sigmas_endpoints():
    s = karras_sigmas(18, 0.002, 80.0)
    assert float(s[0]) == pytest.approx(80.0) and float(s[-1]) == pytest.approx(0.002)


@pytest.mark.parametrize("schedule", [from_scheduler_config(DDPMScheduler())[0], EDM(), RectifiedFlow()])
def test_training_time_samplers_stay_in_range(schedule):
    g = torch.Generator().manual_seed(0)
    for sampler in (UniformTime(0.2, 0.6), LogNormalSigma(), DiscreteRange(0.02, 0.98), KarrasRamp()):
        t = sampler.sample(schedule, 2000, generator=g)
        assert t.shape == (2000,) and float(t.min()) >= schedule.t_min - 1e-6
        assert float(t.max()) <= schedule.t_max + 1e-6
    if isinstance(schedule, VPDiscrete):
        t = DiscreteRange(0.02, 0.98).sample(schedule, 5000, generator=g)
        assert float(t.min()) == 20 and float(t.max()) == 979 and bool((t == t.round()).all())
        t = UniformTime(0.2, 0.6).sample(schedule, 5000, generator=g)
        assert 0.2 * 999 <= float(t.min()) and float(t.max()) <= 0.6 * 999
    if isinstance(schedule, EDM):  # EDM's lognormal: median sigma = exp(P_mean)
        t = LogNormalSigma(-1.2, 1.2).sample(schedule, 20000, generator=g)
        assert float(t.median()) == pytest.approx(torch.exp(torch.tensor(-1.2)).item(), rel=0.05)
    if not isinstance(schedule, RectifiedFlow):  # SiD's levels: sigma/alpha^(1/7) uniform over [0.002, 24.4]
        t = KarrasRamp().sample(schedule, 20000, generator=g)
        ratio = schedule.ratio(t.double())
        lo, hi = 0.002 ** (1 / 7), 0.002 ** (1 / 7) + 0.8 * (80 ** (1 / 7) - 0.002 ** (1 / 7))
        assert float(ratio.max()) <= hi ** 7 * 1.001 and float(ratio.max()) > 0.9 * hi ** 7
        assert float(ratio.median()) == pytest.approx(((lo + hi) / 2) ** 7, rel=0.05)  # clipping moves tails only


def test_flow_training_times_follow_the_schedulers_shift():
    """SD3's shift t' = s t / (1 + (s - 1) t) warps training times too (the teacher was trained on them):
    the discrete table is the shifted uniform grid, and uniform times have the shifted median s / (1 + s)."""
    flow = RectifiedFlow(shift=3.0)
    u = torch.linspace(0.1, 1.0, 10, dtype=torch.float64)
    torch.testing.assert_close(DiscreteRange(0.0, 1.0, num=10).table(flow), 3 * u / (1 + 2 * u))
    t = UniformTime().sample(flow, 20000, generator=torch.Generator().manual_seed(0))
    assert float(t.median()) == pytest.approx(0.75, abs=0.01)


def test_teacher_levels_are_each_familys_training_table():
    """`TeacherLevels` (the default fake-score times): integer training indices over all of [0, T) on VP
    teachers; the 1,000-level Karras table on EDM (DMD2's edm_guidance: 40% of draws below sigma 1, median
    2.5, where uniform-in-sigma puts 1.3% and 40); the scheduler's shifted grid on flow teachers."""
    from stepdistill.time_sampling import TeacherLevels, fake_score_times

    g = torch.Generator().manual_seed(0)
    vp = VPDiscrete(DDPMScheduler().alphas_cumprod)
    t = TeacherLevels().sample(vp, 20000, generator=g)
    assert torch.equal(t, t.round()) and int(t.min()) == 0 and int(t.max()) == 999
    edm = EDM()
    t = TeacherLevels().sample(edm, 50000, generator=g)
    assert 0.38 < float((t < 1).float().mean()) < 0.42 and 2.2 < float(t.median()) < 2.8
    assert float((UniformTime().sample(edm, 50000, generator=g) < 1).float().mean()) < 0.02
    flow = RectifiedFlow(shift=3.0)
    t = TeacherLevels().sample(flow, 20000, generator=g)
    grid = flow.shifted(torch.linspace(1e-3, 1, 1000, dtype=torch.float64)).float()
    assert torch.isin(t, grid).all() and float(t.median()) > 0.7  # shift 3 moves the median from 0.5 to 0.75
    assert isinstance(fake_score_times("teacher"), TeacherLevels) and isinstance(fake_score_times("uniform"), UniformTime)
    with pytest.raises(ValueError, match="teacher"):
        fake_score_times("karras")
