"""Score Forgetting Distillation (Chen et al. 2025, "Score Forgetting Distillation: A Swift, Data-Free Method for
Machine Unlearning in Diffusion Models", ICLR; official code `DDPM/functions/losses.py::sid_g_loss_conditional`):
SiD's generator loss with each row weighted by its term's coefficient."""

from __future__ import annotations

import torch

from .sid import sid_normaliser


def sfd_loss(x: torch.Tensor, y_teacher: torch.Tensor, y_fake: torch.Tensor, weight: torch.Tensor,
             alpha: float) -> torch.Tensor:
    """SFD generator loss over a batch of retained and forgotten rows, mean reduction:

        omega_b = max(mean_n |x_bn - y_teacher_bn|, 1e-5)                        (detached)
        l_b     = mean_n (y_teacher - y_fake) ((y_teacher - x) - alpha (y_teacher - y_fake)) / omega_b
        loss    = mean_b w_b l_b

    Each row is SiD's loss (`sid_loss`, SiD Eq. 23). On a retained row x = G(z, c), and the teacher and the fake
    score both see c; on a forgotten row x = G(z, c_f), the fake score sees c_f and the teacher the override c_o
    (`y_teacher = x0_teacher(x_t, c_o)`), so the forgotten condition is pulled onto the override's distribution.
    The official loop takes `g_remain_coef * mean_remain(l) + g_forget_coef * mean_forget(l)` over equal numbers
    of each (with l summed over elements: this loss times N, a constant Adam ignores); `weight` (B,) writes that
    as one mean: w_b = coef / (the fraction of the batch in b's term), 2 coef for an even split.
    With every w_b = 1 it is `sid_loss`.

    Shapes: x, y_teacher, y_fake (B, ...), any float dtype, computed in float32; weight (B,); a float32 scalar.
    """
    x, r, f = x.float(), y_teacher.float(), y_fake.float()
    omega = sid_normaliser(x, r).view(-1, *[1] * (x.ndim - 1))
    d = r - f
    per_row = (d * ((r - x) - alpha * d) / omega).flatten(1).mean(1)
    return (weight.to(per_row) * per_row).mean()
