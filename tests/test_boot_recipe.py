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
    """An MLP D trained only with BOOT's loss, in the recipe's one-step form (y_t = (1 - rho_T / rho_t) D(x_T,
    T - t), x_T = sigma_T eps), against the exact mixture denoiser, from noise and never a sample of the mixture:
    D(x_T, T) lands on the 8 modes. Thresholds as the other toy2d tests: sliced Wasserstein < 0.1 (untrained ~0.6)
    and every mode >= 6% of the samples."""
    from stepdistill.data.toy2d import GaussianMixtureDenoiser
    from stepdistill.metrics import sliced_wasserstein

    torch.manual_seed(0)
    teacher = GaussianMixtureDenoiser(MIXTURE, SCHEDULE)
    net = mlp(3, 2)
    grid = torch.linspace(999, 0, 17).round()
    rho = SCHEDULE.alpha(grid) / SCHEDULE.sigma(grid)
    top = float(SCHEDULE.sigma(grid[:1]))

    def d(x, t):
        return net(torch.cat([x, (t / 1000.0)[:, None]], 1))

    def signal(x, t, r):  # the signal at grid time t (its rho r) of the trajectory from x = sigma_T eps
        return (1 - rho[0] / r)[:, None] * d(x, 999 - t)

    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(1500):
        eps = torch.randn(256, 2)
        x = top * eps
        i = torch.randint(0, 16, (256,))
        with torch.no_grad():
            y_t = torch.where((i == 0)[:, None], torch.zeros_like(eps), signal(x, grid[i], rho[i]))
            x_t = SCHEDULE.alpha(grid[i])[:, None] * y_t + SCHEDULE.sigma(grid[i])[:, None] * eps
            target = losses.signal_step(y_t, teacher(x_t, grid[i]), rho[i], rho[i + 1]) / (1 - rho[0] / rho[i + 1])[:, None]
        loss = losses.boot_loss(d(x, 999 - grid[i + 1]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    reference, _ = MIXTURE.sample(2000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        samples = d(top * torch.randn(2000, 2, generator=torch.Generator().manual_seed(2)), torch.full((2000,), 999.0))
    assert sliced_wasserstein(samples, reference) < 0.1
    assert float(mode_fractions(samples).min()) > 0.06


@pytest.fixture
def boot_run(digits_like_teacher, tmp_path, fresh_accelerate_state):
    import boot
    import quick

    def make(*extra):
        return boot.setup(quick.config("boot", digits_like_teacher, tmp_path / "run", "train.batch_size=4", *extra))

    return make


@pytest.mark.parametrize("steps", [1, 2])
def test_the_loss_is_the_papers_bootstrap_on_the_same_draws(boot_run, steps):
    """The recipe's loss against the formula computed here, independently, from the same draws (labels, z, the
    interval): in segment k from x_tau (sigma(t_max) z, carried by the student's DDIM jumps through the earlier
    segments), the student's signal y_u = (1 - rho_tau / rho_u) D(x_tau, tau_k + tau_k+1 - u) regressed onto
    sg[y_t + (1 - rho_t / rho_u)(f_w(alpha_t y_t + sigma_t x_tau / sigma_tau, t) - y_t)], y_t = 0 at the segment's
    start, f_w the teacher guided at w; the regression taken in D's units."""
    import boot

    from stepdistill.training import Draw

    run = boot_run("loss.guidance=2.0", "loss.levels=4", f"model.steps={steps}")
    s = run.setup
    sched = s.schedule
    grid = torch.tensor([999.0, 749.0, 500.0, 250.0, 0.0], dtype=torch.float64)
    assert torch.equal(run.grid, grid)
    per = 4 // steps
    starts = grid[::per]
    a = lambda v: sched.alpha(v).float().view(-1, 1, 1, 1)  # noqa: E731
    sg = lambda v: sched.sigma(v).float().view(-1, 1, 1, 1)  # noqa: E731
    seen = set()
    for step in range(4):
        loss, _ = boot.bootstrap_loss(run, Draw(s.accelerator, 4, seed=0, step=step))
        draw = Draw(s.accelerator, 4, seed=0, step=step)
        labels = draw.labels(s.conditioner)
        z = draw.randn(*s.shape)
        i = torch.randint(0, 4, (4,), generator=draw.g)
        k = i // per
        seen |= set(k.tolist())
        t, u, tau = grid[i], grid[i + 1], starts[k]
        gen, cond, uncond = run.generator, s.conditioner.cond(labels), s.conditioner.uncond(labels)
        with torch.no_grad():
            x = z * float(sched.sigma(torch.tensor(999.0, dtype=torch.float64)))
            for row in range(4):  # the student's DDIM jumps to its segment's start, one sample at a time
                for j in range(int(k[row])):
                    one = {key: v[row:row + 1] for key, v in cond.items()}
                    x0 = gen(x[row:row + 1], starts[j:j + 1].float(), **one)
                    eps_hat = (x[row:row + 1] - a(starts[j:j + 1]) * x0) / sg(starts[j:j + 1])
                    x[row:row + 1] = a(starts[j + 1:j + 2]) * x0 + sg(starts[j + 1:j + 2]) * eps_hat
            rho = lambda v: a(v) / sg(v)  # noqa: E731
            y_t = (1 - rho(tau) / rho(t)) * gen(x, (starts[k] + starts[k + 1] - t).float(), **cond)
            y_t[i % per == 0] = 0
            x_t = a(t) * y_t + sg(t) * x / sg(tau)
            c, n = run.teacher(x_t, t.float(), **cond), run.teacher(x_t, t.float(), **uncond)
            f = n + 2.0 * (c - n)
            target = (y_t + (1 - rho(t) / rho(u)) * (f - y_t)) / (1 - rho(tau) / rho(u))
            expected = ((gen(x, (starts[k] + starts[k + 1] - u).float(), **cond) - target) ** 2).mean()
        torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-7)
    assert seen == set(range(steps))  # every segment drawn


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


def test_the_student_samples_each_segment_with_a_ddim_jump(boot_run):
    """One step: D(sigma(t_max) z, t_max). K steps: D at each segment's start and a deterministic DDIM jump (TCD's
    gamma = 0, what the exported TCDScheduler runs), which is the training's own carry between segments."""
    import boot

    one = boot.students(boot_run("loss.levels=8"))[0]
    assert one.sampler.timesteps == (999.0,) and one.nfe == 1 and one.sampler.kind == "multistep"
    run = boot_run("loss.levels=8", "model.steps=4")
    student = boot.students(run)[0]
    assert student.sampler.timesteps == (999.0, 749.0, 500.0, 250.0) and student.sampler.gamma == 0.0
    labels = torch.tensor([1, 2])
    cond = run.setup.conditioner.cond(labels)
    z = torch.randn(2, *run.setup.shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = student.sample(labels, torch.Generator().manual_seed(3))
        x = boot.segment_start(run, run.generator, z, torch.full((2,), 4), cond)  # the jump past the last segment
    sched = run.setup.schedule
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)
    assert float(sched.sigma(torch.tensor(0.0, dtype=torch.float64))) < 0.02  # x at t = 0 is the sample


def test_a_text_to_image_run_takes_prompts_only(tmp_path, fresh_accelerate_state):
    import boot
    import quick

    from stepdistill.training import Draw

    run = boot.setup(quick.config("boot", "tiny-sd", tmp_path / "run", "train.batch_size=2", "loss.guidance=2.0",
                                  "data.prompts=assets/prompts/smoke.txt"))
    logs = boot.step(run, Draw(run.setup.accelerator, 2, seed=0, step=0), 0)
    assert logs["loss"] == logs["loss"] and run.setup.real is None


@pytest.mark.parametrize("override,match", [("loss.levels=0", "loss.levels=0 must be a positive multiple"),
                                            ("loss.guidance=0.5", "loss.guidance=0.5 must be >= 1"),
                                            ("loss.levels=5000", "loss.levels=5000 exceeds the teacher's"),
                                            ("model.steps=3", "loss.levels=32 must be a positive multiple of model")])
def test_bad_input_fails_before_any_step(boot_run, override, match):
    with pytest.raises(ValueError, match=match):
        boot_run(override)


@pytest.mark.slow
def test_a_four_step_student_exports_to_a_stock_scheduler_that_samples_its_images(tiny_teachers, tmp_path,
                                                                                   fresh_accelerate_state):
    """K steps export as a stock `TCDScheduler` at gamma 0 over the segments' starts: the pipeline, loaded without
    stepdistill, gives the student's images."""
    import boot
    import quick
    from safetensors.torch import load_file
    from without_stepdistill import SEEDED, images_without_stepdistill

    teacher = tiny_teachers["digits"]
    out = tmp_path / "run"
    run = ("model.steps=4", "loss.levels=8", "train.max_steps=2", "train.checkpoint_every=2", "export.enabled=true")
    boot.main(quick.config("boot", teacher, out, *run))
    assert '"TCDScheduler"' in (out / "pipeline" / "scheduler" / "scheduler_config.json").read_text()
    fresh = boot.setup(quick.config("boot", teacher, tmp_path / "fresh", *run))
    student = boot.students(fresh)[0]
    student.load_state_dict(load_file(str(sorted((out / "checkpoints").glob("step_*"))[-1] / "student.safetensors")))
    images = images_without_stepdistill(out / "pipeline", tmp_path, f"class_labels=[7, 3, 0], {SEEDED}")
    expected = student.images(torch.tensor((7, 3, 0)), torch.Generator().manual_seed(0)) * 0.5 + 0.5
    # diffusers' TCDScheduler ends its last DDIM jump at training index 0 (alpha_0 x0 + sigma_0 eps, sigma_0 = 0.006
    # on the cosine schedule) where stepdistill's sampler returns x0: every other step agrees to float rounding
    torch.testing.assert_close(images, expected, atol=0.01, rtol=0)
    assert (images - expected).abs().mean() < 2e-3
