"""Consistency distillation on the exact 2-D teacher (LCM's algorithm, Luo et al. 2023; diffusers'
`train_lcm_distill_*.py`): the student reaches the 8-mode mixture at 1 and 2 steps, the DMD test's criteria
(sliced Wasserstein < 0.1, every mode >= 6%), in about ten seconds."""

import copy

import torch
from toy2d_training import MIXTURE, SCHEDULE, ToyFakeScore, mode_fractions

from stepdistill import losses
from stepdistill.data.toy2d import GaussianMixtureDenoiser
from stepdistill.consistency import lcm_scalings
from stepdistill.metrics import sliced_wasserstein
from stepdistill.samplers import ddim_step, multistep

SKIP = 20  # LCM's skipping step: a 50-level DDIM grid {19, 39, ..., 999} on 1,000 training indices


def consistency(net, x_t, t):
    """f(x_t, t) = c_skip(t) x_t + c_out(t) x0_hat(x_t, t), LCM's boundary scalings: f(x, 0) = x."""
    c_skip, c_out = lcm_scalings(t)
    return c_skip[:, None] * x_t + c_out[:, None] * net(x_t, t)


def test_consistency_distillation_reaches_the_mixture_at_one_and_two_steps():
    torch.manual_seed(0)
    teacher = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
    student = ToyFakeScore()
    target_net = copy.deepcopy(student).requires_grad_(False)  # LCM's EMA target, decay 0.95
    opt = torch.optim.Adam(student.parameters(), 3e-3)
    grid = torch.arange(SKIP - 1, 1000, SKIP).float()
    for _ in range(2000):
        x0, _ = MIXTURE.sample(256)
        start = grid[torch.randint(0, len(grid), (256,))]
        t = (start - SKIP).clamp_min(0)
        x_start = SCHEDULE.add_noise(x0.float(), torch.randn(256, 2), start)
        with torch.no_grad():
            x_prev = ddim_step(teacher, SCHEDULE, x_start, start, t)  # one teacher solver step
            target = torch.where((t == 0)[:, None], x_prev, consistency(target_net, x_prev, t))
        loss = losses.consistency_l2_loss(consistency(student, x_start, start), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p_target, p in zip(target_net.parameters(), student.parameters()):
                p_target.lerp_(p, 0.05)
    target_set, _ = MIXTURE.sample(2000, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(2))
    f = lambda x, t: consistency(student, x, t)  # noqa: E731
    for ts in ([999.0], [999.0, 499.0]):
        samples = multistep(f, SCHEDULE, z, torch.tensor(ts), generator=torch.Generator().manual_seed(3))
        assert sliced_wasserstein(samples, target_set) < 0.1, ts
        assert float(mode_fractions(samples).min()) > 0.06, ts
