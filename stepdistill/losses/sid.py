"""Score identity Distillation (Zhou et al. 2024, ICML, arXiv:2404.04057): the generator loss and its
per-sample normaliser. The specification of the fused kernel `stepdistill_kernels.sid`."""

from __future__ import annotations

import torch

OMEGA_MIN = 1e-5  # the official code's clip on the per-sample normaliser


@torch.no_grad()
def sid_normaliser(x: torch.Tensor, y_real: torch.Tensor) -> torch.Tensor:
    """SiD Eq. 23's omega_b = max(mean_n |x_bn - y_real_bn|, 1e-5) per sample, float32, shape (B,), detached."""
    return (x.float() - y_real.float()).abs().flatten(1).mean(1).clamp_min(OMEGA_MIN)


def sid_loss(x: torch.Tensor, y_real: torch.Tensor, y_fake: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD generator loss (Zhou et al. 2024, "Score identity Distillation", ICML; official code
    `training/sid_loss.py::SID_EDMLoss.generator_loss`), mean reduction over every element:

        omega_b = max(mean_n |x_bn - y_real_bn|, 1e-5)                     (detached: no gradient)
        loss    = mean_{b,n} (y_real - y_fake) * ((y_real - x) - alpha (y_real - y_fake)) / omega_b

    x = G(z) is the generated sample, y_real / y_fake the teacher / fake-score x0 predictions at a noised
    copy of x; all three carry gradients (SiD backpropagates through both networks' activations).
    With d = y_real - y_fake, e = y_real - x and M = B * N elements:

        d loss / dx      = -d / (omega M)
        d loss / dy_real = (e + (1 - 2 alpha) d) / (omega M)
        d loss / dy_fake = (2 alpha d - e) / (omega M)

    Normalisation: the official loop takes `loss.sum() * loss_scaling_G / batch` (loss_scaling_G = 100),
    i.e. this loss times 100 N (N elements per sample). Adam is invariant to that constant (up to its eps);
    multiply by it to reproduce the official scale with SGD or gradient clipping. The official code also
    drops samples containing NaN before the loss; this function does not (filter upstream if needed).
    alpha: 1.2 in SiD (1.0 for AFHQ); alpha = 1 gives d * (y_fake - x) / omega, SiD-LSG's form.

    Shapes: (B, ...), any float dtype; computed in float32; returns a float32 scalar.
    """
    x, r, f = x.float(), y_real.float(), y_fake.float()
    omega = sid_normaliser(x, r).view(-1, *[1] * (x.ndim - 1))
    d = r - f
    return (d * ((r - x) - alpha * d) / omega).mean()
