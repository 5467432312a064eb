"""BOOT: data-free distillation by bootstrapping (Gu et al. 2023, arXiv:2306.05544): the signal-ODE step that gives
the student's target, and the regression onto it.

The student g(eps, t) predicts the *signal* y_t = (x_t - sigma_t eps) / alpha_t of the teacher's deterministic
trajectory that starts from pure noise eps: x_t = alpha_t y_t + sigma_t eps, eps fixed along the trajectory. With
f the teacher's x0 prediction and rho = alpha / sigma, the trajectory's signal obeys dy/dlambda = f(x_t, t) - y
(lambda = log rho; the paper's signal ODE, its eps term cancelled).
"""

from __future__ import annotations

import torch


def signal_step(y_t: torch.Tensor, x0_teacher: torch.Tensor, rho_t: torch.Tensor, rho_s: torch.Tensor
                ) -> torch.Tensor:
    """One step of the signal ODE from t down to s < t, with the teacher's x0 prediction f held over the step:

        y_s = y_t + (1 - rho_t / rho_s) (f(alpha_t y_t + sigma_t eps, t) - y_t)

    the exact solution for constant f (the exponential integrator: DDIM's step, written in signal space, so that
    alpha_s y_s + sigma_s eps is DDIM's x_s from x_t). For small steps it is the Euler step
    y_t + (lambda_s - lambda_t)(f - y_t) (the reading of the paper's discretisation), to first order.
    `rho_*`: (B,), broadcast over the sample's dimensions."""
    view = (-1,) + (1,) * (y_t.dim() - 1)
    c = (1 - rho_t / rho_s).to(y_t.dtype).view(view)
    return y_t + c * (x0_teacher - y_t)


def boot_loss(y_s: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BOOT's bootstrapping loss: mean_b mean_n (g(eps, s) - sg(y_s target))^2, the target detached (computed from
    the student's own g(eps, t) and the teacher, under no_grad). Unit weight per pair (see `recipes/boot.py`)."""
    return ((y_s.float() - target.detach().float()) ** 2).flatten(1).mean(1).mean()
