import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from torch import nn

from stepdistill.denoiser import PREDICTION_TYPES, Denoiser, from_x0, native_loss_weight, to_eps, to_flow, to_score, to_v, to_x0
from stepdistill.guidance import CFGDenoiser, lcm_guidance_to_cfg
from stepdistill.schedules import EDM, from_scheduler_config

# (alpha, sigma) pairs from each family, plus a pair that is none of them.
COEFFS = {"vp": (0.6, 0.8), "edm": (1.0, 3.0), "flow": (0.3, 0.7), "other": (0.9, 0.2)}


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("family", COEFFS)
def test_round_trip_every_parameterisation(prediction_type, family):
    alpha, sigma = (torch.full((4,), v, dtype=torch.float64) for v in COEFFS[family])
    x0, eps = torch.randn(4, 3, 5, 5, dtype=torch.float64), torch.randn(4, 3, 5, 5, dtype=torch.float64)
    x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * eps
    out = from_x0(prediction_type, x_t, x0, alpha, sigma, sigma_data=0.5)
    torch.testing.assert_close(to_x0(prediction_type, x_t, out, alpha, sigma, sigma_data=0.5), x0)


def test_conversions_match_their_definitions():
    alpha, sigma = torch.tensor([0.6, 0.3]), torch.tensor([0.8, 0.7])
    x0, eps = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    a, s = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
    x_t = a * x0 + s * eps
    torch.testing.assert_close(to_eps(x_t, x0, alpha, sigma), eps)
    torch.testing.assert_close(to_v(x_t, x0, alpha, sigma), a * eps - s * x0)
    torch.testing.assert_close(to_flow(x_t, x0, alpha, sigma), eps - x0)
    torch.testing.assert_close(to_score(x_t, x0, alpha, sigma), -eps / s)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_native_loss_weight_is_the_jacobian_squared(prediction_type):
    alpha, sigma = torch.tensor([0.6, 1.0, 0.3], dtype=torch.float64), torch.tensor([0.8, 3.0, 0.7], dtype=torch.float64)
    x_t, x0 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    delta = 1e-3 * torch.randn(3, 4, dtype=torch.float64)
    out_err = from_x0(prediction_type, x_t, x0 + delta, alpha, sigma) - from_x0(prediction_type, x_t, x0, alpha, sigma)
    w = native_loss_weight(prediction_type, alpha, sigma).view(-1, 1)
    torch.testing.assert_close(out_err**2, w * delta**2)


class Reparameterised(nn.Module):
    """Reads a base network's output as x0 and re-expresses it in `prediction_type`: every version
    describes the same denoiser, so `Denoiser` must return the same x0 for all of them."""

    def __init__(self, base, schedule, prediction_type, timestep_to_t=lambda ts: ts):
        super().__init__()
        self.base, self.schedule, self.prediction_type, self.timestep_to_t = base, schedule, prediction_type, timestep_to_t

    def forward(self, sample, timestep, **cond):
        x0 = self.base(sample, timestep=timestep, **cond).sample
        t = self.timestep_to_t(timestep)
        return (from_x0(self.prediction_type, sample, x0, self.schedule.alpha(t), self.schedule.sigma(t)),)


def _unet_cases(tiny_unet, tiny_cond_unet):
    return [(tiny_unet, (2, 1, 8, 8), dict(class_labels=torch.tensor([0, 2]))),
            (tiny_cond_unet, (2, 4, 8, 8), dict(encoder_hidden_states=torch.randn(2, 5, 16)))]


@pytest.mark.parametrize("which", [0, 1])
def test_denoiser_same_x0_whatever_the_prediction_type_unets(which, tiny_unet, tiny_cond_unet):
    net, shape, cond = _unet_cases(tiny_unet, tiny_cond_unet)[which]
    schedule, _ = from_scheduler_config(DDIMScheduler(beta_schedule="scaled_linear"))
    x_t, t = torch.randn(shape), torch.tensor([10.0, 700.0])
    with torch.no_grad():
        reference = net(x_t, t, **cond).sample
        for p in ("epsilon", "v_prediction", "sample"):
            x0 = Denoiser(Reparameterised(net, schedule, p), schedule, p)(x_t, t, **cond)
            torch.testing.assert_close(x0, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("which", [0, 1])
def test_denoiser_matches_diffusers_pred_original_sample(prediction_type, which, tiny_unet, tiny_cond_unet):
    net, shape, cond = _unet_cases(tiny_unet, tiny_cond_unet)[which]
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(10)
    schedule, pt = from_scheduler_config(scheduler)
    den = Denoiser(net, schedule, pt)
    x_t = torch.randn(shape)
    with torch.no_grad():
        for timestep in scheduler.timesteps[[0, 5]]:
            out = net(x_t, timestep, **cond).sample
            ref = torch.stack([scheduler.step(out[i:i + 1], timestep, x_t[i:i + 1]).pred_original_sample[0]
                               for i in range(len(x_t))])
            torch.testing.assert_close(den(x_t, timestep.float(), **cond), ref, atol=1e-4, rtol=1e-4)


def test_denoiser_flow_transformer(tiny_sd3_transformer):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    schedule, prediction_type = from_scheduler_config(scheduler)
    cond = dict(encoder_hidden_states=torch.randn(2, 6, 16), pooled_projections=torch.randn(2, 16))
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        v = tiny_sd3_transformer(x_t, timestep=t * 1000, **cond).sample
        x0 = Denoiser(tiny_sd3_transformer, schedule, prediction_type)(x_t, t, **cond)
        torch.testing.assert_close(x0, x_t - t.view(-1, 1, 1, 1) * v)  # diffusers' flow x0: x_t - sigma v
        for p in ("epsilon", "v_prediction", "sample", "flow"):
            wrapped = Reparameterised(tiny_sd3_transformer, schedule, p, timestep_to_t=lambda ts: ts / 1000)
            base = Reparameterised(tiny_sd3_transformer, schedule, "sample", timestep_to_t=lambda ts: ts / 1000)
            torch.testing.assert_close(Denoiser(wrapped, schedule, p)(x_t, t, **cond),
                                       Denoiser(base, schedule, "sample")(x_t, t, **cond), atol=1e-4, rtol=1e-4)


def test_denoiser_edm_preconditioning():
    class Echo(nn.Module):  # returns its input: lets the test see c_in and the output scalings
        def forward(self, sample, timestep):
            return sample

    schedule = EDM(sigma_data=0.5)
    x_t, sigma = torch.randn(3, 2), torch.tensor([0.1, 1.0, 10.0])
    x0 = Denoiser(Echo(), schedule, "edm")(x_t, sigma)
    c_in = 1 / torch.sqrt(sigma**2 + 0.25)
    c_skip, c_out = 0.25 / (sigma**2 + 0.25), sigma * 0.5 / torch.sqrt(sigma**2 + 0.25)
    torch.testing.assert_close(x0, c_skip[:, None] * x_t + c_out[:, None] * c_in[:, None] * x_t)


def test_denoiser_runs_half_precision_nets_and_returns_float32(tiny_unet):
    schedule, _ = from_scheduler_config(DDIMScheduler())
    den = Denoiser(tiny_unet.to(torch.bfloat16), schedule, "epsilon")
    x0 = den(torch.randn(2, 1, 8, 8), 500.0, class_labels=torch.tensor([1, 2]))
    assert x0.dtype == torch.float32 and torch.isfinite(x0).all()


def test_cfg_convention(tiny_unet):
    schedule, _ = from_scheduler_config(DDIMScheduler())
    den = Denoiser(tiny_unet, schedule, "epsilon")
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([100.0, 900.0])
    cond, uncond = dict(class_labels=torch.tensor([0, 1])), dict(class_labels=torch.tensor([3, 3]))
    with torch.no_grad():
        c, u = den(x_t, t, **cond), den(x_t, t, **uncond)
        torch.testing.assert_close(CFGDenoiser(den, 1.0)(x_t, t, uncond=uncond, **cond), c)
        torch.testing.assert_close(CFGDenoiser(den, 0.0)(x_t, t, uncond=uncond, **cond), u, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(CFGDenoiser(den, 4.5)(x_t, t, uncond=uncond, **cond), u + 4.5 * (c - u),
                                   atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="uncond"):
        CFGDenoiser(den, 2.0)(x_t, t, **cond)
    assert lcm_guidance_to_cfg(7.5) == 8.5


def test_unknown_prediction_type_is_named(tiny_unet):
    schedule, _ = from_scheduler_config(DDIMScheduler())
    with pytest.raises(ValueError, match="x_start"):
        Denoiser(tiny_unet, schedule, "x_start")


def test_denoiser_dit_with_learned_variance():
    """DiT-style class-conditional transformers predict (eps, variance) stacked on channels."""
    from diffusers import DiTTransformer2DModel

    net = DiTTransformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=1,
                                num_attention_heads=2, attention_head_dim=8, num_embeds_ada_norm=10).eval()
    schedule, _ = from_scheduler_config(DDIMScheduler())
    x_t, t, y = torch.randn(2, 4, 8, 8), torch.tensor([100.0, 800.0]), torch.tensor([1, 7])
    with torch.no_grad():
        out = net(x_t, timestep=t, class_labels=y).sample
        x0 = Denoiser(net, schedule, "epsilon", learn_sigma=True)(x_t, t, class_labels=y)
    assert out.shape[1] == 8
    torch.testing.assert_close(x0, to_x0("epsilon", x_t, out[:, :4], schedule.alpha(t), schedule.sigma(t)))


@pytest.mark.parametrize("boundary", ["cm", "lcm"])
def test_consistency_denoiser_meets_its_boundary_condition(boundary, tiny_unet):
    """f(x, t_min) = x exactly (c_skip = 1, c_out = 0) and f -> D away from it: the official CM scalings
    (sigma_min shift) on the VE level sigma / alpha, LCM's at the network timestep with scaling 10."""
    from stepdistill.consistency import ConsistencyDenoiser, consistency_scalings, lcm_scalings

    c_skip, c_out = consistency_scalings(torch.tensor([0.002, 1.0, 80.0]))
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0
    torch.testing.assert_close(c_skip[1], torch.tensor(0.25 / (0.998**2 + 0.25)))
    torch.testing.assert_close(c_out[2], torch.tensor(0.5 * 79.998 / (80**2 + 0.25) ** 0.5))
    c_skip, c_out = lcm_scalings(torch.tensor([0.0, 19.0]))
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0 and float(c_skip[1]) < 1e-3

    if boundary == "cm":
        schedule, sigma_min = EDM(), 0.002
        t_min = torch.tensor([sigma_min])
    else:
        schedule, sigma_min = from_scheduler_config(DDIMScheduler(beta_schedule="squaredcos_cap_v2"))[0], 0.002
        t_min = torch.tensor([0.0])
    den = Denoiser(tiny_unet, schedule, "edm" if boundary == "cm" else "epsilon")
    f = ConsistencyDenoiser(den, boundary, sigma_min=sigma_min)
    x = torch.randn(2, 1, 8, 8)
    cond = {"class_labels": torch.tensor([0, 1])}
    with torch.no_grad():
        torch.testing.assert_close(f(x, t_min.expand(2), **cond), x)
        t_far = torch.tensor([80.0 if boundary == "cm" else 999.0]).expand(2)
        far, plain = f(x, t_far, **cond), den(x, t_far, **cond)
        # the official form: c_out multiplies the raw EDM output F ("cm"), LCM's the x0 prediction ("lcm")
        raw = tiny_unet(x * schedule.c_in(t_far).view(-1, 1, 1, 1), timestep=schedule.timestep(t_far),
                        **cond).sample
    c_skip, c_out = f.scalings(t_far)
    torch.testing.assert_close(far, c_skip[0] * x + c_out[0] * (raw if boundary == "cm" else plain))


def test_segment_consistency_jumps_to_the_lower_edge_and_is_the_identity_there():
    """MLCM / phased students: on (e_{j+1}, e_j] the student DDIM-jumps on its own x0 to e_{j+1}; the jump
    tends to the identity at the lower edge, an edge itself jumps to the next edge, the last segment gives x0."""
    from diffusers import DDPMScheduler
    from torch import nn

    from stepdistill.denoiser import Denoiser
    from stepdistill.consistency import SegmentConsistencyDenoiser
    from stepdistill.schedules import VPDiscrete, time_grid

    class Half(nn.Module):  # a "sample"-prediction network: x0 = x_t / 2
        def forward(self, x, timestep, **cond):
            return 0.5 * x

    schedule = VPDiscrete(DDPMScheduler().alphas_cumprod)
    edges = time_grid(schedule, 3, "uniform")
    assert edges.tolist() == [999.0, 666.0, 333.0, 0.0]
    f = SegmentConsistencyDenoiser(Denoiser(Half(), schedule, "sample"), edges)
    t = torch.tensor([999.0, 666.0, 500.0, 333.0, 10.0])
    assert f.lower_edge(t).tolist() == [666.0, 333.0, 333.0, 0.0, 0.0]
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = f(x, t)
    a_t, s_t = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
    e = f.lower_edge(t)
    a_e = torch.where(e == 0, torch.ones_like(e), schedule.alpha(e)).view(-1, 1, 1, 1)
    s_e = torch.where(e == 0, torch.zeros_like(e), schedule.sigma(e)).view(-1, 1, 1, 1)
    torch.testing.assert_close(out, (a_e * 0.5 * x + s_e * (x - a_t * 0.5 * x) / s_t).float())
    torch.testing.assert_close(out[3:], 0.5 * x[3:])  # the last segment: x0
    near = f(x[:1], torch.tensor([333.0001]))  # just above an edge: (nearly) the identity
    torch.testing.assert_close(near, x[:1], rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="end at 0"):
        SegmentConsistencyDenoiser(Denoiser(Half(), schedule, "sample"), torch.tensor([999.0, 500.0]))
