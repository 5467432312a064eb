"""Parity with the official codes: each generator and fake-score loss as the library computes it (our
`Denoiser` conversions, `CFGDenoiser`, `stepdistill.losses`) against the official formula re-derived here
from the official code's equations in its own units (epsilon predictions, `alphas_cumprod`, integer
timesteps), on toy networks so that gradients run through them where the official code lets them, at
guidance 1 and above. The gradient with respect to the generator's output (or, for fake-score losses, the
network's weights) must match to 1e-5 relative, up to the constant stated per method.

Official sources (see ../reference notes): DMD2 `main/sd_guidance.py` (`compute_distribution_matching_loss`,
`compute_loss_fake`, `compute_cls_logits` losses) and `main/edm/edm_guidance.py`; SiD `training/sid_loss.py`
and SiD-LSG `training/sid_training_loop.py`; SwiftBrush `train_swiftbrush.py`. SIM has no official trainer:
its loss is checked against the paper's score-unit formula.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stepdistill import losses
from stepdistill.denoiser import Denoiser, native_loss_weight
from stepdistill.guidance import CFGDenoiser
from stepdistill.schedules import EDM, VPDiscrete

CLASSES, NULL = 4, 4  # label 4 is the unconditional (null) class
B, C, H = 3, 2, 6


class ToyNet(nn.Module):
    """A class-conditional convolutional network called like a diffusers UNet2DModel (returns a tensor)."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.inp = nn.Conv2d(C, 8, 3, padding=1)
        self.out = nn.Conv2d(8, C, 3, padding=1)
        self.label = nn.Embedding(CLASSES + 1, 8)
        self.time = nn.Linear(1, 8)

    def forward(self, x, timestep, class_labels):
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1, 1).expand(x.shape[0], 1)
        h = self.inp(x) + self.time(t / 1000)[..., None, None] + self.label(class_labels)[..., None, None]
        return self.out(torch.tanh(h))


def sd_alphas_cumprod() -> torch.Tensor:
    """Stable Diffusion's scaled-linear betas (0.00085 .. 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


ABAR = sd_alphas_cumprod()
SCHEDULE = VPDiscrete(ABAR)


def get_x0_from_noise(sample, model_output, alphas_cumprod, timestep):
    """DMD2's `main/utils.py::get_x0_from_noise` (run there in float64)."""
    alpha_prod_t = alphas_cumprod[timestep].reshape(-1, 1, 1, 1)
    return (sample - (1 - alpha_prod_t) ** 0.5 * model_output) / alpha_prod_t ** 0.5


def add_noise(x, noise, t):
    """diffusers' `DDPMScheduler.add_noise`: sqrt(abar_t) x + sqrt(1 - abar_t) noise."""
    a = ABAR[t].float().reshape(-1, 1, 1, 1)
    return a.sqrt() * x + (1 - a).sqrt() * noise


def guided_eps(net, x_t, t, labels, scale):
    """CFG on epsilon, as the official codes batch it: uncond + s (cond - uncond)."""
    cond = net(x_t, t, labels)
    if scale == 1.0:
        return cond
    return net(x_t, t, torch.full_like(labels, NULL)) + scale * (cond - net(x_t, t, torch.full_like(labels, NULL)))


def ours_guided(net, scale, x_t, t, labels, prediction_type="epsilon"):
    den = CFGDenoiser(Denoiser(net, SCHEDULE, prediction_type), scale)
    return den(x_t, t.float(), uncond={"class_labels": torch.full_like(labels, NULL)} if scale != 1 else None,
               class_labels=labels)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, H, generator=g)
    noise = torch.randn(B, C, H, H, generator=g)
    t = torch.tensor([20, 500, 979])  # both ends of DMD2's index range and the middle
    labels = torch.tensor([0, 2, 3])
    return x, noise, t, labels


@pytest.mark.parametrize("scale", [1.0, 1.75])
def test_dmd2_generator_gradient(inputs, scale):
    """DMD2: grad = (p_real - p_fake) / mean|p_real|, p = x - x0_hat (x0 in float64 from epsilon), loss
    0.5 mse(x, sg(x - grad)); real with CFG, fake at guidance 1. Constant: 1."""
    x, noise, t, labels = inputs
    real, fake = ToyNet(1), ToyNet(2)
    # official
    xo = x.clone().requires_grad_(True)
    with torch.no_grad():
        noisy = add_noise(xo, noise, t)
        real_x0 = get_x0_from_noise(noisy.double(), guided_eps(real, noisy, t, labels, scale).double(), ABAR, t)
        fake_x0 = get_x0_from_noise(noisy.double(), fake(noisy, t, labels).double(), ABAR, t)
        p_real, p_fake = xo.double() - real_x0, xo.double() - fake_x0
        grad = torch.nan_to_num((p_real - p_fake) / p_real.abs().mean(dim=[1, 2, 3], keepdim=True))
    (0.5 * F.mse_loss(xo.float(), (xo - grad).detach().float())).backward()
    # ours
    xs = x.clone().requires_grad_(True)
    x_t = SCHEDULE.add_noise(xs.detach(), noise, t.float())
    with torch.no_grad():
        x0_real, x0_fake = ours_guided(real, scale, x_t, t, labels), ours_guided(fake, 1.0, x_t, t, labels)
    losses.dmd_loss(xs, x0_real, x0_fake).backward()
    assert relative(xs.grad, xo.grad) < 1e-5


def test_dmd2_gan_losses():
    """DMD2's classifier losses: D softplus(fake) + softplus(-real), G softplus(-fake), batch means."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(5, 1, generator=g, requires_grad=True), torch.randn(5, 1, generator=g, requires_grad=True)
    official_d = (F.softplus(fake).mean() + F.softplus(-real).mean())
    official_g = F.softplus(-fake).mean()
    torch.testing.assert_close(losses.discriminator_loss(real, fake), official_d)
    torch.testing.assert_close(losses.generator_gan_loss(fake), official_g)
    gd = torch.autograd.grad(losses.discriminator_loss(real, fake), (real, fake))
    od = torch.autograd.grad(official_d, (real, fake))
    assert all(relative(a, b) < 1e-6 for a, b in zip(gd, od))


def _fake_param_grads(loss, net):
    return torch.cat([p.grad.flatten() for p in net.parameters()]) if loss is None else \
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(net.parameters()))])


def test_dmd2_fake_score_loss_sd(inputs):
    """DMD2 `compute_loss_fake` on SD: unweighted epsilon MSE, t ~ U[0, 1000). Ours: x0 error weighted by
    `native_loss_weight("epsilon")`. Constant: 1 (loss and weight gradients)."""
    x, noise, t, labels = inputs
    fake = ToyNet(2)
    noisy = add_noise(x, noise, t)
    official = F.mse_loss(fake(noisy, t, labels).float(), noise)
    x_t = SCHEDULE.add_noise(x, noise, t.float())
    weight = native_loss_weight("epsilon", SCHEDULE.alpha(t.float()), SCHEDULE.sigma(t.float()))
    ours = losses.denoising_loss(Denoiser(fake, SCHEDULE, "epsilon")(x_t, t.float(), class_labels=labels), x, weight)
    assert float(ours.detach()) == pytest.approx(float(official.detach()), rel=1e-5)
    assert relative(_fake_param_grads(ours, fake), _fake_param_grads(official, fake)) < 1e-5


def test_dmd2_fake_score_loss_edm():
    """DMD2 on EDM: x0 MSE weighted by 1 / sigma^2 + 1 / sigma_data^2 (EDM's lambda). Constant: 1."""
    schedule = EDM()
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(B, C, H, H, generator=g), torch.randn(B, C, H, H, generator=g)
    sigma = torch.tensor([0.01, 1.0, 40.0])
    net = ToyNet(3)
    den = Denoiser(net, schedule, "edm")
    x_t = x + sigma.view(-1, 1, 1, 1) * noise
    x0 = den(x_t, sigma, class_labels=torch.tensor([0, 1, 2]))
    official = ((1 / sigma ** 2 + 1 / 0.5 ** 2).view(-1, 1, 1, 1) * (x0 - x) ** 2).mean()
    ours = losses.denoising_loss(x0, x, native_loss_weight("edm", 1.0, sigma))
    assert float(ours) == pytest.approx(float(official), rel=1e-6)


@pytest.mark.parametrize("scale, alpha", [(1.0, 1.2), (1.5, 1.0), (4.5, 1.0)])
def test_sid_lsg_generator_gradient_through_both_networks(inputs, scale, alpha):
    """SiD / SiD-LSG: y_real, y_fake = x0 predictions (epsilon converted with abar) at x_t = sqrt(abar) x +
    sqrt(1 - abar) n, both with LSG guidance kappa, gradients through x_t and both networks' activations;
    loss = sum((y_r - y_f)((y_r - x) - alpha (y_r - y_f)) / omega) * loss_scaling / B, omega =
    mean|x - y_r| detached, clipped at 1e-5. Constant: ours x 100 N (N elements a sample) = official."""
    x, noise, t, labels = inputs
    real, fake = ToyNet(1), ToyNet(2)
    for p in [*real.parameters(), *fake.parameters()]:
        p.requires_grad_(False)
    # official
    xo = x.clone().requires_grad_(True)
    x_t = add_noise(xo, noise, t)
    a = ABAR[t].float().reshape(-1, 1, 1, 1)
    y_real = (x_t - (1 - a).sqrt() * guided_eps(real, x_t, t, labels, scale)) / a.sqrt()
    y_fake = (x_t - (1 - a).sqrt() * guided_eps(fake, x_t, t, labels, scale)) / a.sqrt()
    with torch.no_grad():
        omega = (xo - y_real).abs().mean(dim=[1, 2, 3], keepdim=True).clip(min=1e-5)
    loss = (y_real - y_fake) * ((y_real - xo) - alpha * (y_real - y_fake)) / omega
    (loss.sum() * 100 / B).backward()
    # ours
    xs = x.clone().requires_grad_(True)
    x_t = SCHEDULE.add_noise(xs, noise, t.float())
    ours = losses.sid_loss(xs, ours_guided(real, scale, x_t, t, labels), ours_guided(fake, scale, x_t, t, labels), alpha)
    (ours * 100 * C * H * H).backward()
    assert relative(xs.grad, xo.grad) < 1e-5


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sid_lsg_fake_score_loss_is_eps_mse(inputs, prediction_type):
    """SiD-LSG's fake-score loss: epsilon MSE, on v-prediction teachers the v MSE times snr / (snr + 1);
    with LSG guidance kappa on the fake score's training output. Ours: `fake_weighting=eps`, the x0 error
    weighted by `native_loss_weight("epsilon")` whatever the parameterisation. Constant: 1."""
    x, noise, t, labels = inputs
    fake, kappa = ToyNet(2), 1.5
    a = ABAR[t].float().reshape(-1, 1, 1, 1)
    noisy = add_noise(x, noise, t)
    out = guided_eps(fake, noisy, t, labels, kappa)  # the network's output, eps or v
    if prediction_type == "epsilon":
        official = F.mse_loss(out, noise)
    else:
        v = a.sqrt() * noise - (1 - a).sqrt() * x
        snr = a / (1 - a)
        official = (snr / (snr + 1) * (out - v) ** 2).mean()
    x_t = SCHEDULE.add_noise(x, noise, t.float())
    weight = native_loss_weight("epsilon", SCHEDULE.alpha(t.float()), SCHEDULE.sigma(t.float()))
    ours = losses.denoising_loss(ours_guided(fake, kappa, x_t, t, labels, prediction_type), x, weight)
    assert relative(_fake_param_grads(ours, fake), _fake_param_grads(official, fake)) < 1e-5
    native = losses.denoising_loss(ours_guided(fake, kappa, x_t, t, labels, prediction_type), x,
                                   native_loss_weight(prediction_type, SCHEDULE.alpha(t.float()), SCHEDULE.sigma(t.float())))
    if prediction_type == "v_prediction":  # native = v-MSE: 1 / alpha^2 heavier than SiD-LSG's at every t
        assert float(native) > 1.5 * float(ours)


@pytest.mark.parametrize("s_real, s_fake", [(1.0, 1.0), (4.5, 4.5), (7.5, 1.0)])
def test_swiftbrush_vsd_gradient(inputs, s_real, s_fake):
    """SwiftBrush: grad = nan_to_num(sigma_t^2 (eps_teacher - eps_lora)), both with CFG, loss 0.5
    mse(x, sg(x - grad)); ours: `vsd_loss` in x0 units with weight alpha_t sigma_t. Constant: 1."""
    x, noise, t, labels = inputs
    teacher, lora = ToyNet(1), ToyNet(2)
    xo = x.clone().requires_grad_(True)
    with torch.no_grad():
        noisy = add_noise(xo, noise, t)
        eps_t, eps_l = guided_eps(teacher, noisy, t, labels, s_real), guided_eps(lora, noisy, t, labels, s_fake)
        grad = torch.nan_to_num((1 - ABAR[t].float()).reshape(-1, 1, 1, 1) * (eps_t - eps_l))
    (0.5 * F.mse_loss(xo, (xo - grad).detach())).backward()
    xs = x.clone().requires_grad_(True)
    x_t = SCHEDULE.add_noise(xs.detach(), noise, t.float())
    null = {"class_labels": torch.full_like(labels, NULL)}
    with torch.no_grad():
        rc, ru = CFGDenoiser(Denoiser(teacher, SCHEDULE, "epsilon"), s_real).branches(x_t, t.float(), uncond=null, class_labels=labels)
        fc, fu = CFGDenoiser(Denoiser(lora, SCHEDULE, "epsilon"), s_fake).branches(x_t, t.float(), uncond=null, class_labels=labels)
    weight = SCHEDULE.alpha(t.float()) * SCHEDULE.sigma(t.float())
    losses.vsd_loss(xs, rc, ru, fc, fu, s_real, s_fake, weight).backward()
    assert relative(xs.grad, xo.grad) < 1e-5


def test_swiftbrush_lora_loss(inputs):
    """SwiftBrush's LoRA loss: MSE(alpha_t eps_hat, alpha_t eps) with 10% null prompts upstream. Ours: the x0
    error weighted by native_loss_weight x alpha^2. Constant: 1."""
    x, noise, t, labels = inputs
    lora = ToyNet(2)
    a = ABAR[t].float().reshape(-1, 1, 1, 1)
    noisy = add_noise(x, noise, t)
    official = F.mse_loss(a.sqrt() * lora(noisy, t, labels), a.sqrt() * noise)
    x_t = SCHEDULE.add_noise(x, noise, t.float())
    alpha, sigma = SCHEDULE.alpha(t.float()), SCHEDULE.sigma(t.float())
    ours = losses.denoising_loss(Denoiser(lora, SCHEDULE, "epsilon")(x_t, t.float(), class_labels=labels), x,
                                 native_loss_weight("epsilon", alpha, sigma) * alpha ** 2)
    assert float(ours.detach()) == pytest.approx(float(official.detach()), rel=1e-5)
    assert relative(_fake_param_grads(ours, lora), _fake_param_grads(official, lora)) < 1e-5


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_sim_matches_the_papers_score_unit_loss_up_to_its_stated_constant(inputs, scale):
    """SIM (no official trainer): the paper's L = -d'(y)^T (s_real(x_t) - grad log q_t(x_t | x)) with
    y = s_real - s_fake, pseudo-Huber d'(y) = y / sqrt(||y||^2 + c_s^2), in score units s = (alpha x0 - x_t) /
    sigma^2, gradients through x_t and both networks. Ours: `sim_loss` in x0 units with c = c_s sigma^2 /
    alpha. Constant: ours x (-alpha / sigma^2) per sample = the paper's, the sign being the one the toy
    tests settled (`sim_loss`'s docstring)."""
    x, noise, t, labels = inputs
    real, fake = ToyNet(1), ToyNet(2)
    for p in [*real.parameters(), *fake.parameters()]:
        p.requires_grad_(False)
    alpha, sigma = SCHEDULE.alpha(t.float()).view(-1, 1, 1, 1), SCHEDULE.sigma(t.float()).view(-1, 1, 1, 1)
    c_s = 0.5
    # the paper, in score units, per sample, with x0 predictions from our denoisers
    xp = x.clone().requires_grad_(True)
    x_t = SCHEDULE.add_noise(xp, noise, t.float())
    x0r, x0f = ours_guided(real, scale, x_t, t, labels), ours_guided(fake, scale, x_t, t, labels)
    s_real, s_fake = (alpha * x0r - x_t) / sigma ** 2, (alpha * x0f - x_t) / sigma ** 2
    grad_log_q = (alpha * xp - x_t) / sigma ** 2
    y = (s_real - s_fake).flatten(1)
    d_prime = y / torch.sqrt((y ** 2).sum(1, keepdim=True) + c_s ** 2)
    paper = -(d_prime * (s_real - grad_log_q).flatten(1)).sum(1)
    paper.sum().backward()
    # ours, per sample (weight picks one sample at a time), converted
    scale_b = (-alpha / sigma ** 2).flatten()
    total = torch.zeros_like(x)
    for b in range(B):
        xs = x.clone().requires_grad_(True)
        x_t = SCHEDULE.add_noise(xs, noise, t.float())
        x0r, x0f = ours_guided(real, scale, x_t, t, labels), ours_guided(fake, scale, x_t, t, labels)
        c = float(c_s * sigma.flatten()[b] ** 2 / alpha.flatten()[b])
        # sim_loss averages over the batch and sums over elements of u . (x0_real - x)
        loss = losses.sim_loss(xs[b:b + 1], x0r[b:b + 1], x0f[b:b + 1], c) * scale_b[b]
        total += torch.autograd.grad(loss, xs)[0]
    assert relative(total, xp.grad) < 1e-5


def _lcm_ddim_solver_step(alphas_cumprod, pred_x0, pred_noise, timestep_index, ddim_timesteps=50):
    """diffusers' LCM distillation scripts, `DDIMSolver.ddim_step`: the previous level of the skip grid, whose
    first entry is alphas_cumprod[0] (the lowest training level, not clean data)."""
    step_ratio = 1000 // ddim_timesteps
    grid = (torch.arange(1, ddim_timesteps + 1) * step_ratio).round().long() - 1
    prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[grid[:-1]]])
    a_prev = prev[timestep_index].view(-1, 1, 1, 1)
    return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * pred_noise


def test_lcm_teacher_step_at_the_boundary_pair_and_inside():
    """The consistency target's teacher step (`samplers.ddim_step`) against LCM's DDIMSolver on SD's schedule: every
    interior pair agrees; on the boundary pair (19 -> 0) stepdistill's default lands on clean data, 0.029 of the
    image away (sqrt(1 - abar_0)), and `loss.solver_zero=lowest_level` (the schedule's `at_zero`) matches."""
    from diffusers import DDPMScheduler

    from stepdistill.samplers import ddim_step
    from stepdistill.schedules import from_scheduler_config

    config = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    schedule, _ = from_scheduler_config(config)
    abar = DDPMScheduler.from_config(config).alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x0, x = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for index, (t, s) in [(0, (19, 0)), (1, (39, 19)), (49, (999, 979))]:
        tt, ss = torch.full((2,), float(t)), torch.full((2,), float(s))
        eps = (x - abar[t].sqrt().float() * x0) / (1 - abar[t]).sqrt().float()
        official = _lcm_ddim_solver_step(abar.float(), x0, eps, torch.full((2,), index))
        lowest = ddim_step(None, schedule.at_zero("lowest_level"), x, tt, ss, x0=x0)
        torch.testing.assert_close(lowest, official, atol=2e-6, rtol=0)
        clean = ddim_step(None, schedule, x, tt, ss, x0=x0)
        if s:
            torch.testing.assert_close(clean, official, atol=2e-6, rtol=0)
        else:
            gap = float((clean - official).abs().max() / eps.abs().max())
            assert gap == pytest.approx(float((1 - abar[0]).sqrt()), rel=0.05) and 0.02 < gap < 0.04
