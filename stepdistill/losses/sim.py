"""Score implicit matching (Luo et al. 2024, "One-step diffusion distillation through score implicit matching")."""

from __future__ import annotations

import torch

from .weights import weighted_mean


def sim_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, c: float = 0.1,
             weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """SIM generator loss with the pseudo-Huber distance (SIM Sec. 3.2-3.3), written in x0 units:

        y_b    = x0_real_b - x0_fake_b
        u_b    = d'(y_b) = y_b / sqrt(||y_b||^2 + c^2)          (d(y) = sqrt(||y||^2 + c^2) - c)
        loss   = mean_b w_b u_b . (x0_real_b - x_b)

    The paper writes L = E[-d'(y_t)^T (s_real(x_t) - grad log q_t(x_t|x))] with y_t = s_real - s_fake
    in score units. With s = (alpha_t x0 - x_t) / sigma_t^2, s_real - grad log q_t(x_t|x) =
    (alpha_t / sigma_t^2)(x0_real - x) and y_t = (alpha_t / sigma_t^2)(x0_real - x0_fake), so y here is
    the score difference times sigma_t^2 / alpha_t, and c is in the same units as x0: a difference
    ||x0_real - x0_fake|| well below c is penalised quadratically (u ~ y / c, SiD's alpha = 0 term with a
    constant normaliser), one well above it linearly (u a unit vector: the per-sample normalisation
    SiD gets from omega). A score-space constant c_s is c = c_s sigma_t^2 / alpha_t; the remaining
    alpha_t / sigma_t^2, or any other time weighting, goes into `weight`.

    Sign and stop-gradients: x, x0_real and x0_fake all carry gradient, including through u (no
    stop-gradient on d'(y)), and the networks' activations are differentiated with respect to x_t as in
    SiD; only the fake score's parameters are frozen. Then d loss / dx = -w_b u_b / B: descent moves each
    sample along x0_real - x0_fake, the direction DMD's gradient takes. This is the sign of SiD's alpha = 0
    term (x0_real - x0_fake)^T (x0_real - x); the paper's leading minus, read with y = s_real - s_fake,
    is the opposite one (it agrees if y is read as s_fake - s_real, since d' is odd). No official SIM
    trainer exists, so both were settled on the exact 2-D teacher by
    `tests/test_toy2d_distillation.py::test_sim_drives_a_generator_to_the_target_mixture` (this loss
    reaches the 8-mode mixture and lowers the re-fitted score divergence) and
    `::test_sim_with_the_opposite_sign_does_not_converge` (the minus sign leaves the samples as far
    from the mixture as they started, or, with u detached, sends them off). Detaching u reached the
    mixture on two of three seeds, and gradients only through x (no backpropagation through the
    networks) missed the threshold in the same budget; the gradients are pinned by
    `::test_sim_loss_gradients`.

    Shapes: x, x0_real, x0_fake (B, ...), any float dtype; the norm and inner product run over each whole
    sample; weight a float, a (B,) tensor or None (= 1). Computed in float32; returns a float32 scalar.
    """
    x, r, f = x.float(), x0_real.float(), x0_fake.float()
    return weighted_mean((pseudo_huber_direction(r, f, c) * (r - x).flatten(1)).sum(1), weight, x)


def pseudo_huber_direction(x0_real: torch.Tensor, x0_fake: torch.Tensor, c: float) -> torch.Tensor:
    """u = d'(y) = y / sqrt(||y||^2 + c^2) per sample, y = x0_real - x0_fake flattened: shape (B, N)."""
    y = (x0_real - x0_fake).flatten(1)
    return y / torch.sqrt(y.square().sum(1, keepdim=True) + c * c)


def sim_fixed_direction_loss(x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor, c: float = 0.1,
                             weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """SIM's generator loss in its fixed-direction form, written in x0 units:

        u_b    = sg(d'(x0_real_b - x0_fake_b))                   (held fixed: no gradient)
        loss   = mean_b w_b u_b . (x0_fake_b - x_b)

    The score-gradient theorem (SIM Theorem 3.1) differentiates the divergence with the direction d'(y)
    evaluated at the current parameters; held fixed, the integrand's x-dependence is the fake score's
    residual x0_fake - x (score units: s_fake(x_t) - grad log q_t(x_t | x)), whose expectation over the
    generator's own samples vanishes at the fake score's optimum. `sim_loss` is the form the paper writes
    (the real score's residual, d'(y) inside the gradient: "on-policy"); both share the leading term
    d loss / dx = -w_b u_b / B, and so the same stationary point, and differ in the second-order terms
    through the networks (`experiments/sim_forms/sim_forms.py` measures both).

    Shapes and dtypes as `sim_loss`; computed in float32; returns a float32 scalar.
    """
    x, r, f = x.float(), x0_real.float(), x0_fake.float()
    with torch.no_grad():
        u = pseudo_huber_direction(r, f, c)
    return weighted_mean((u * (f - x).flatten(1)).sum(1), weight, x)
