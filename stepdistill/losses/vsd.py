"""Variational score distillation with both guidances (SwiftBrush). The specification of the fused
kernel `stepdistill_kernels.vsd`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .weights import per_sample


def vsd_loss(
    x: torch.Tensor,
    x0_real_cond: torch.Tensor,
    x0_real_uncond: torch.Tensor,
    x0_fake_cond: torch.Tensor,
    x0_fake_uncond: torch.Tensor,
    s_real: float,
    s_fake: float,
    weight: torch.Tensor | float,
) -> torch.Tensor:
    """Variational score distillation surrogate (VSD of ProlificDreamer, Wang et al. 2023, as SwiftBrush,
    Nguyen & Tran 2024, distils with it: `train_swiftbrush.py`), written in x0 space, mean reduction.

        x0_real = x0_real_uncond + s_real * (x0_real_cond - x0_real_uncond)   (teacher, CFG)
        x0_fake = x0_fake_uncond + s_fake * (x0_fake_cond - x0_fake_uncond)   (LoRA fake score, CFG)
        grad    = nan_to_num(w_b * (x0_fake - x0_real))
        loss    = 0.5 * mean((x - sg(x - grad))^2),   d loss / dx = grad / x.numel()

    Any per-sample weight w(t) covers both conventions: the eps-space gradient
    sigma_t^2 (eps_real - eps_fake) equals alpha_t sigma_t (x0_fake - x0_real) (eps = (x_t - alpha_t x0) /
    sigma_t), so SwiftBrush's w(t) = sigma_t^2 in eps space is w = alpha_t sigma_t here. SDS is the case
    where the "fake" prediction is the injected noise's x0 (pass it as x0_fake_* with s_fake = 1).

    Shapes: x and the four predictions (B, ...), any float dtype; weight a float or (B,). Computed in
    float32; returns a float32 scalar. No gradient to the predictions or the weight.
    """
    with torch.no_grad():
        w = per_sample(weight, x.shape[0], x).view(-1, *([1] * (x.ndim - 1)))
        real = x0_real_uncond.float() + s_real * (x0_real_cond.float() - x0_real_uncond.float())
        fake = x0_fake_uncond.float() + s_fake * (x0_fake_cond.float() - x0_fake_uncond.float())
        grad = torch.nan_to_num(w * (fake - real), nan=0.0, posinf=0.0, neginf=0.0)
        xd = x.detach().float()
    return 0.5 * F.mse_loss(x.float(), xd - grad, reduction="mean")
