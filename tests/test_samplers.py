import functools

import pytest
import torch
from diffusers import DDIMScheduler

from stepdistill.data.toy2d import GaussianMixture, GaussianMixtureDenoiser
from stepdistill.denoiser import from_x0
from stepdistill.samplers import (SAMPLERS, ddim, multistep, nfe_of, prior_noise, sample, steps_for_nfe)
from stepdistill.schedules import EDM, RectifiedFlow, from_scheduler_config

MIXTURE = GaussianMixture()


def _vp():
    return from_scheduler_config(DDIMScheduler(beta_schedule="squaredcos_cap_v2"))[0]


def test_ddim_matches_diffusers_ddim_scheduler():
    """Our DDIM on the exact toy denoiser equals diffusers' DDIMScheduler loop (eta = 0, trailing)."""
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=False,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    schedule, _ = from_scheduler_config(scheduler)
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    scheduler.set_timesteps(5)  # divides 1000, so DDIM's prev_timestep is the next grid point
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    ours = ddim(den, x.clone(), schedule, torch.cat([scheduler.timesteps.double(), torch.zeros(1, dtype=torch.float64)]))
    ref = x.clone()
    for t in scheduler.timesteps:
        tt = t.float().expand(len(ref))
        eps = from_x0("epsilon", ref, den(ref, tt), schedule.alpha(tt), schedule.sigma(tt))
        ref = scheduler.step(eps, t, ref).prev_sample
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def _error(schedule, name, nfe, x, reference):
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    out = sample(den, schedule, x, sampler=name, steps=steps_for_nfe(name, nfe))
    return float((out - reference).norm(dim=1).mean())


@pytest.mark.parametrize("schedule", [_vp(), EDM(), RectifiedFlow()], ids=["vp", "edm", "flow"])
def test_higher_order_samplers_converge_faster(schedule):
    """On the exact teacher every sampler converges to the same ODE solution; DDIM at first order
    (error halves when NFE doubles), Heun and DPM-Solver++(2M) at second order."""
    x = prior_noise(schedule, (512, 2), generator=torch.Generator().manual_seed(1))
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    reference = sample(den, schedule, x, sampler="dpmpp_2m", steps=400)
    err = {(name, nfe): _error(schedule, name, nfe, x, reference)
           for name in ("ddim", "heun", "dpmpp_2m") for nfe in (32, 63)}
    assert err["ddim", 63] / err["ddim", 32] > 0.4, err  # first order
    assert err["heun", 63] / err["heun", 32] < 0.4 and err["heun", 63] < 0.5 * err["ddim", 63], err
    assert err["dpmpp_2m", 32] < 0.4 * err["ddim", 32] and err["dpmpp_2m", 63] < 0.005, err


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_samplers_reach_the_target_mixture(name):
    schedule = _vp()
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    x = prior_noise(schedule, (2000, 2), generator=torch.Generator().manual_seed(2))
    out = sample(den, schedule, x, sampler=name, steps=steps_for_nfe(name, 63))
    radius = out.norm(dim=1)
    assert abs(float(radius.mean()) - 1.0) < 0.015 and abs(float(radius.std()) - 0.1) < 0.02


def test_class_conditional_sampling_lands_on_the_class():
    schedule = EDM()
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    labels = torch.arange(8).repeat(50)
    x = prior_noise(schedule, (400, 2), generator=torch.Generator().manual_seed(3))
    out = sample(functools.partial(den, class_labels=labels), schedule, x, sampler="heun", steps=10)
    assert float((out - MIXTURE.means[labels].float()).norm(dim=1).max()) < 0.6


def test_nfe_accounting():
    assert [nfe_of("heun", steps_for_nfe("heun", n)) for n in (1, 2, 4, 8, 35)] == [1, 1, 3, 7, 35]
    assert [nfe_of("dpmpp_2m", steps_for_nfe("dpmpp_2m", n)) for n in (1, 2, 4)] == [1, 2, 4]
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(lambda x, t: x, _vp(), torch.zeros(1, 2), sampler="plms")


def test_multistep_student_sampling_with_fresh_noise():
    """A perfect consistency 'student' (the exact ODE solution from (x_t, t) to data) sampled with
    DMD2's 4-step schedule stays on the data, with one evaluation per listed time."""
    schedule = _vp()
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    calls = []

    def student(x, t):
        calls.append(float(t[0]))
        ts = torch.linspace(float(t[0]), 0, 65, dtype=torch.float64)
        return SAMPLERS["dpmpp_2m"](den, x, schedule, ts)

    x = prior_noise(schedule, (1000, 2), generator=torch.Generator().manual_seed(4))
    out = multistep(student, schedule, x, torch.tensor([999.0, 749.0, 499.0, 249.0]),
                    generator=torch.Generator().manual_seed(5))
    assert calls == [999.0, 749.0, 499.0, 249.0] and out.shape == (1000, 2)
    assert abs(float(out.norm(dim=1).mean()) - 1.0) < 0.02


def test_sampler_name_type_lists_every_sampler():
    from typing import get_args

    from stepdistill.samplers import SAMPLERS, SamplerName

    assert set(get_args(SamplerName)) == set(SAMPLERS)


@pytest.mark.parametrize("solver", ["ddim", "heun"])
def test_per_sample_solver_steps_take_a_time_per_sample(solver):
    """`ddim_step` / `heun_step` with a different (t, s) per sample equal the same step taken sample by
    sample (consistency distillation's skipping-step teacher solver), and a step into s = 0 returns x0."""
    from stepdistill.samplers import ddim_step, heun_step

    step = {"ddim": ddim_step, "heun": heun_step}[solver]
    schedule = _vp()
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999.0, 700.0, 300.0, 40.0], dtype=torch.float64)
    s = torch.tensor([979.0, 0.0, 280.0, 20.0], dtype=torch.float64)
    together = step(den, schedule, x, t, s)
    alone = torch.cat([step(den, schedule, x[i:i + 1], t[i:i + 1], s[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together[1], den(x[1:2], t[1:2].float())[0])  # into s = 0: the x0 prediction
    # a small DDIM / Heun step stays close to the exact ODE: both solvers agree to first order
    other = {"ddim": heun_step, "heun": ddim_step}[solver](den, schedule, x, t, s)
    assert float((together - other)[[0, 2, 3]].abs().max()) < 0.05


def test_renoise_chain_serves_multistep_and_backward_simulation():
    """One chain: backward simulation to step k is the first k rounds of multistep sampling with the same
    noises, and multistep's result is the chain's last x0."""
    from stepdistill.samplers import backward_simulation, renoise_chain

    schedule = _vp()
    den = GaussianMixtureDenoiser(MIXTURE, schedule)
    ts = torch.tensor([999.0, 749.0, 499.0, 249.0], dtype=torch.float64)
    z = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    noises = [torch.randn(8, 2, generator=torch.Generator().manual_seed(10 + i)) for i in range(3)]
    for k in range(4):
        x_k = backward_simulation(den, schedule, z, ts, k, renoise=noises[:k])
        it = iter(noises)
        torch.testing.assert_close(x_k, renoise_chain(den, schedule, z, ts, k, lambda shape: next(it))[0])
    it = iter(noises)
    torch.testing.assert_close(multistep(den, schedule, z, ts, renoise=lambda shape: next(it)),
                               den(backward_simulation(den, schedule, z, ts, 3, renoise=noises),
                                   torch.full((8,), 249.0)))


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0])
def test_tcd_step_matches_diffusers_tcd_scheduler(gamma):
    """A middle step of `tcd_step` against diffusers' TCDScheduler.step on the same epsilon model and noise;
    at gamma = 1 it is the consistency re-noising alpha_next x0 + sigma_next z (s = 0 is clean data here,
    where diffusers' TCD takes training index 0, which holds a little noise)."""
    from diffusers import TCDScheduler

    from stepdistill.samplers import tcd_step
    from stepdistill.schedules import VPDiscrete

    scheduler = TCDScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(4)
    schedule = VPDiscrete(scheduler.alphas_cumprod)
    eps_model = lambda x, t: 0.3 * x + torch.sin(torch.as_tensor(t, dtype=torch.float32) / 100)  # noqa: E731

    def denoise(x, t):
        a, s = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
        return (x - s * eps_model(x, t.view(-1, 1, 1, 1))) / a

    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    t, t_next = scheduler.timesteps[1], scheduler.timesteps[2]
    scheduler._step_index = 1
    want = scheduler.step(eps_model(x, t.float()), t, x, eta=gamma, generator=torch.Generator().manual_seed(5)).prev_sample
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    got = tcd_step(denoise, schedule, x, t.float(), t_next.float(), gamma, z)
    if gamma == 1.0:
        t_n = t_next.double().reshape(1)
        want = float(schedule.alpha(t_n)) * denoise(x, t.float().expand(2)) + float(schedule.sigma(t_n)) * z
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
