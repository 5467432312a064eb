"""Consistency building blocks against the formulas of the public code: the losses (iCT's per-sample
pseudo-Huber, LCM's element-wise Huber, L2), the weightings (iCT, ECT) and the curricula (iCT's doubling
and lognormal index sampling, ECT's r(t))."""

import math

import pytest
import torch
import torch.nn.functional as F

from stepdistill import losses
from stepdistill.curricula import ICTPairs, ect_r, ict_levels


def _pair():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 8, 8, generator=g, requires_grad=True), torch.randn(4, 3, 8, 8, generator=g)


def test_lcm_huber_is_elementwise_and_ict_pseudo_huber_is_per_sample():
    pred, target = _pair()
    c = 0.001
    lcm = torch.mean(torch.sqrt((pred - target) ** 2 + c ** 2) - c)  # diffusers train_lcm_distill_*.py
    torch.testing.assert_close(losses.lcm_huber_loss(pred, target, c), lcm)
    g_ours, = torch.autograd.grad(losses.lcm_huber_loss(pred, target, c), pred)
    g_lcm, = torch.autograd.grad(lcm, pred)
    torch.testing.assert_close(g_ours, g_lcm)
    c_ict = 0.00054 * math.sqrt(3 * 8 * 8)
    per_sample = (torch.sqrt(((pred - target) ** 2).flatten(1).sum(1) + c_ict ** 2) - c_ict).mean()  # iCT Eq. 4
    torch.testing.assert_close(losses.pseudo_huber_loss(pred, target, c_ict), per_sample)
    elementwise = torch.mean(torch.sqrt((pred - target) ** 2 + c_ict ** 2) - c_ict)
    assert float(per_sample.detach()) > 10 * float(elementwise.detach())  # not the same metric: the norm is over a whole sample


def test_l2_and_the_weightings():
    pred, target = _pair()
    torch.testing.assert_close(losses.consistency_l2_loss(pred, target), F.mse_loss(pred, target))
    w = torch.tensor([1.0, 2.0, 0.5, 0.0])
    torch.testing.assert_close(losses.consistency_l2_loss(pred, target, w),
                               (w * ((pred - target) ** 2).flatten(1).mean(1)).mean())
    sigma, sigma_next = torch.tensor([0.002, 1.0]), torch.tensor([0.01, 1.5])
    torch.testing.assert_close(losses.ict_weight(sigma, sigma_next), torch.tensor([125.0, 2.0]))
    t, r = torch.tensor([2.0, 0.5]), torch.tensor([1.5, 0.0])
    torch.testing.assert_close(losses.ect_weight(t, r), torch.tensor([2.0, 2.0]))


def test_ict_discretisation_doubles_from_s0_to_s1():
    """diffusers' get_discretization_steps: N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / 8) for
    s0 = 10, s1 = 1280."""
    assert [ict_levels(k, 400_000) for k in (0, 49_999, 50_000, 100_000, 399_999)] == [11, 11, 21, 41, 1281]
    assert ict_levels(10**9, 400_000) == 1281


def test_ict_pairs_follow_the_discretised_lognormal():
    pairs = ICTPairs()
    levels = 41
    grid = pairs.grid(levels)
    assert grid[0] == pytest.approx(0.002) and grid[-1] == pytest.approx(80.0) and bool((grid[1:] > grid[:-1]).all())
    p = pairs.probabilities(levels)
    erf = torch.special.erf
    want = erf((grid[1:].log() + 1.1) / (math.sqrt(2) * 2.0)) - erf((grid[:-1].log() + 1.1) / (math.sqrt(2) * 2.0))
    torch.testing.assert_close(p, want / want.sum())
    lo, hi = pairs.sample(levels, 50_000, generator=torch.Generator().manual_seed(0))
    assert bool((hi > lo).all())
    idx = torch.searchsorted(grid.float(), lo)
    empirical = torch.bincount(idx, minlength=levels - 1).double() / len(lo)
    assert float((empirical - p).abs().max()) < 0.01


def test_ect_r_shrinks_geometrically_by_stage():
    t = torch.tensor([0.01, 0.5, 2.0, 40.0])
    gaps = [t - ect_r(t, stage) for stage in range(4)]
    assert all(bool((ect_r(t, s) >= 0).all() and (ect_r(t, s) < t).all()) for s in range(4))
    big = t > 1  # where r is not clamped at 0, each stage halves t - r (q = 2)
    for a, b in zip(gaps, gaps[1:]):
        torch.testing.assert_close(b[big], a[big] / 2)
    want = t.double() * (1 - 2.0 ** -1 * (1 + 8 * torch.sigmoid(-t.double())))  # locuslab/ect ECMLoss, stage 0
    torch.testing.assert_close(ect_r(t, 0), want.clamp_min(0).float())


def test_vp_skip_grid_is_lcm_s_ddim_solver_grid():
    """diffusers' LCM scripts (DDIMSolver): step_ratio = 1000 // 50, timesteps (arange(1, 51) * step_ratio).round() - 1,
    i.e. 19, 39, ..., 999, with the boundary 0 first."""
    from diffusers import DDPMScheduler

    from stepdistill.curricula import skip_grid
    from stepdistill.schedules import from_scheduler_config

    schedule, _ = from_scheduler_config(DDPMScheduler(num_train_timesteps=1000).config)
    for levels in (50, 8, 1):
        ratio = 1000 // levels
        official = [0.0] + [float(round(i * ratio) - 1) for i in range(1, levels + 1)]
        assert skip_grid(schedule, levels).tolist() == official


def test_edm_skip_grid_ascends_through_the_karras_levels_from_the_boundary():
    """The official CD code's grid on EDM: N Karras sigmas (rho 7) from sigma_min = 0.002 to sigma_max = 80,
    ascending (the boundary first)."""
    from stepdistill.curricula import skip_grid
    from stepdistill.schedules import EDM

    grid = skip_grid(EDM(), 40)
    rho, lo, hi = 7.0, 0.002, 80.0
    i = torch.arange(41, dtype=torch.float64)
    official = (lo ** (1 / rho) + i / 40 * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho  # ascending
    torch.testing.assert_close(grid, official, rtol=1e-9, atol=1e-12)
    assert grid[0] == pytest.approx(0.002) and bool((grid.diff() > 0).all())


def test_segment_edges_are_the_times_lcm_scheduler_samples():
    """S segments of LCM's 50-level grid end where LCMScheduler's S-step sampling lands (999, 879, ..., 139 for
    8), then the boundary; counts that divide each other nest."""
    from diffusers import DDPMScheduler, LCMScheduler

    from stepdistill.curricula import segment_edges, skip_grid
    from stepdistill.schedules import from_scheduler_config

    schedule, _ = from_scheduler_config(DDPMScheduler(num_train_timesteps=1000).config)
    grid = skip_grid(schedule, 50)
    for segments in (1, 2, 4, 8):
        lcm = LCMScheduler(num_train_timesteps=1000, original_inference_steps=50)
        lcm.set_timesteps(segments)
        edges = segment_edges(grid, segments)
        assert edges[:-1].tolist() == [float(t) for t in lcm.timesteps] and edges[-1] == 0
    assert set(segment_edges(grid, 4).tolist()) <= set(segment_edges(grid, 8).tolist())
