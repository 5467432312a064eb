"""BOOT (recipes/boot.py, stepdistill.losses.boot): the signal-ODE step against DDIM's on the same draws, the
bootstrapping loss against an independent computation of the paper's formula, convergence to the toy mixture from
noise alone, and a run that reads no image."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from stepdistill import losses
from toy2d_training import MIXTURE, SCHEDULE, mlp, mode_fractions


def test_the_signal_step_is_ddims_step_written_in_signal_space():
    """alpha_s y_s + sigma_s eps, with y_s the signal step from y_t, is diffusers' DDIM step (eta 0, x0 predicted)
    from x_t = alpha_t y_t + sigma_t eps; for a small step it is the Euler step in lambda = log(alpha / sigma)."""
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=False,
                              set_alpha_to_one=False, timestep_spacing="leading")
    abar = scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    y_t, eps, f = (torch.randn(3, 2, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    scheduler.set_timesteps(32)  # steps of 31 timesteps: 961, 930, ..., 31, 0
    for t, s in ((961, 930), (496, 465), (31, 0)):
        a_t, s_t, a_s, s_s = abar[t].sqrt(), (1 - abar[t]).sqrt(), abar[s].sqrt(), (1 - abar[s]).sqrt()
        x_t = a_t * y_t + s_t * eps
        ddim = scheduler.step(f, t, x_t, eta=0.0).prev_sample
        y_s = losses.signal_step(y_t, f, (a_t / s_t).expand(3), (a_s / s_s).expand(3))
        torch.testing.assert_close(a_s * y_s + s_s * eps, ddim, rtol=1e-6, atol=1e-6)  # diffusers: float32 alphas
    # the reference's Euler step in lambda, to first order
    t, s = 500.0, 499.0
    lam = lambda u: float((abar[int(u)] / (1 - abar[int(u)])).sqrt().log())  # noqa: E731
    rho = lambda u: torch.tensor([(abar[int(u)] / (1 - abar[int(u)])).sqrt()] * 3)  # noqa: E731
    euler = y_t + (lam(s) - lam(t)) * (f - y_t)
    torch.testing.assert_close(losses.signal_step(y_t, f, rho(t), rho(s)), euler, rtol=0, atol=1e-4)


def test_boot_loss_is_the_mean_squared_error_to_a_detached_target():
    g = torch.Generator().manual_seed(1)
    y_s = torch.randn(4, 3, 6, 6, generator=g, requires_grad=True)
    target = torch.randn(4, 3, 6, 6, generator=g, requires_grad=True)
    loss = losses.boot_loss(y_s, target)
    torch.testing.assert_close(loss, ((y_s - target) ** 2).mean())
    loss.backward()
    assert target.grad is None and y_s.grad is not None  # the target is a stop-gradient


def test_boot_reaches_the_target_mixture_from_noise_alone():
    """An MLP g(eps, t) trained only with BOOT's loss against the exact mixture denoiser, from noise and never a
    sample of the mixture: g(eps, t_min) lands on the 8 modes. Thresholds as the other toy2d tests: sliced
    Wasserstein < 0.1 (untrained ~0.6) and every mode >= 6% of the samples."""
    from stepdistill.data.toy2d import GaussianMixtureDenoiser
    from stepdistill.metrics import sliced_wasserstein

    torch.manual_seed(0)
    teacher = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
    net = mlp(3, 2)
    grid = torch.linspace(999, 0, 17).round()
    rho = SCHEDULE.alpha(grid) / SCHEDULE.sigma(grid)

    def g(eps, t):
        return net(torch.cat([eps, (t / 1000.0)[:, None]], 1))

    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(1500):
        eps = torch.randn(256, 2)
        i = torch.randint(0, 16, (256,))
        with torch.no_grad():
            y_t = torch.where((i == 0)[:, None], torch.zeros_like(eps), g(eps, grid[i]))
            x_t = SCHEDULE.alpha(grid[i])[:, None] * y_t + SCHEDULE.sigma(grid[i])[:, None] * eps
            target = losses.signal_step(y_t, teacher(x_t, grid[i]), rho[i], rho[i + 1])
        loss = losses.boot_loss(g(eps, grid[i + 1]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    reference, _ = MIXTURE.sample(2000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        samples = g(torch.randn(2000, 2, generator=torch.Generator().manual_seed(2)), torch.zeros(2000))
    assert sliced_wasserstein(samples, reference) < 0.1
    assert float(mode_fractions(samples).min()) > 0.06


@pytest.fixture
def boot_run(digits_like_teacher, tmp_path, fresh_accelerate_state):
    import boot
    import quick

    def make(*extra):
        return boot.setup(quick.config("boot", digits_like_teacher, tmp_path / "run", "train.batch_size=4", *extra))

    return make


def test_the_loss_is_the_papers_bootstrap_on_the_same_draws(boot_run):
    """The recipe's loss against the formula computed here, independently, from the same draws (labels, eps, the
    interval): g(eps, s) regressed onto sg[y_t + (1 - rho_t / rho_s)(f_w(alpha_t y_t + sigma_t eps, t) - y_t)],
    y_t = g(eps, t) or 0 at the grid's top, f_w the teacher guided at w, g(eps, t) = D(sigma(t_max) eps, t)."""
    import boot

    from stepdistill.training import Draw

    run = boot_run("loss.guidance=2.0", "loss.levels=4")
    s = run.setup
    sched = s.schedule
    for step in range(3):  # draws that include the grid's top
        loss, _ = boot.bootstrap_loss(run, Draw(s.accelerator, 4, seed=0, step=step))
        draw = Draw(s.accelerator, 4, seed=0, step=step)
        labels = draw.labels(s.conditioner)
        eps = draw.randn(*s.shape)
        i = torch.randint(0, 4, (4,), generator=draw.g)
        grid = torch.tensor([999.0, 749.0, 500.0, 250.0, 0.0], dtype=torch.float64)
        assert torch.equal(run.grid, grid)
        t, u = grid[i], grid[i + 1]
        scale = float(sched.sigma(torch.tensor(999.0, dtype=torch.float64)))
        gen, cond = run.generator, s.conditioner.cond(labels)
        uncond = s.conditioner.uncond(labels)
        with torch.no_grad():
            y_t = gen(eps * scale, t.float(), **cond)
            y_t[i == 0] = 0
            x_t = sched.alpha(t).float().view(-1, 1, 1, 1) * y_t + sched.sigma(t).float().view(-1, 1, 1, 1) * eps
            c, n = run.teacher(x_t, t.float(), **cond), run.teacher(x_t, t.float(), **uncond)
            f = n + 2.0 * (c - n)
            rho = lambda v: (sched.alpha(v) / sched.sigma(v)).float().view(-1, 1, 1, 1)  # noqa: E731
            target = y_t + (1 - rho(t) / rho(u)) * (f - y_t)
            expected = ((gen(eps * scale, u.float(), **cond) - target) ** 2).mean()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)


def test_a_run_reads_no_image_and_refuses_real_data_keys(boot_run, monkeypatch, tmp_path):
    """Data-free: nothing that reads an image (the embedded digits, a folder, a stream) is touched while the run sets
    up and trains, and a real-data key is refused before any work."""
    import boot

    from stepdistill.data import folders, stream
    from stepdistill.training import Draw, setup as setup_module

    def forbidden(*args, **kwargs):
        raise AssertionError("BOOT read real data")

    monkeypatch.setattr(setup_module, "embedded_dataset", forbidden)
    monkeypatch.setattr(folders.ImageFolder, "__init__", forbidden)
    monkeypatch.setattr(stream.RealStream, "take", forbidden)
    run = boot_run()
    assert run.setup.real is None and run.setup.dataset is None
    before = [p.detach().clone() for p in run.generator.parameters()]
    for step in range(2):
        logs = boot.step(run, Draw(run.setup.accelerator, 4, seed=0, step=step), step)
        assert logs["loss"] == logs["loss"]
    assert any(not torch.equal(a, b) for a, b in zip(before, run.generator.parameters()))
    with pytest.raises(ValueError, match="boot is data-free: it reads no images; unset data.images"):
        boot_run(f"data.images={tmp_path}")


def test_the_student_samples_its_signal_at_t_min_in_one_step(boot_run):
    import boot

    run = boot_run("loss.levels=8")
    student = boot.students(run)[0]
    assert student.sampler.timesteps == (0.0,) and student.nfe == 1
    z = torch.randn(2, *run.setup.shape, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        expected = boot.signal(run, run.setup.unwrap(run.generator), z, torch.zeros(2),
                               run.setup.conditioner.cond(labels))
        got = student.sample(labels, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_a_text_to_image_run_takes_prompts_only(tmp_path, fresh_accelerate_state):
    import boot
    import quick

    from stepdistill.training import Draw

    run = boot.setup(quick.config("boot", "tiny-sd", tmp_path / "run", "train.batch_size=2", "loss.guidance=2.0",
                                  "data.prompts=assets/prompts/smoke.txt"))
    logs = boot.step(run, Draw(run.setup.accelerator, 2, seed=0, step=0), 0)
    assert logs["loss"] == logs["loss"] and run.setup.real is None


@pytest.mark.parametrize("override,match", [("loss.levels=0", "loss.levels=0 must be >= 1"),
                                            ("loss.guidance=0.5", "loss.guidance=0.5 must be >= 1"),
                                            ("loss.levels=5000", "loss.levels=5000 exceeds the teacher's")])
def test_bad_input_fails_before_any_step(boot_run, override, match):
    with pytest.raises(ValueError, match=match):
        boot_run(override)
