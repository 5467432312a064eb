"""Consistency losses (Song et al. 2023; iCT, Song & Dhariwal 2023). The pseudo-Huber metric is the
specification of the fused kernel `stepdistill_kernels.pseudo_huber`."""

from __future__ import annotations

import torch

from .weights import weighted_mean


def pseudo_huber_loss(
    pred: torch.Tensor, target: torch.Tensor, c: float, weight: torch.Tensor | float | None = None
) -> torch.Tensor:
    """Weighted pseudo-Huber metric of "Improved Techniques for Training Consistency Models" (iCT,
    Song & Dhariwal 2023), d(x, y) = sqrt(||x - y||_2^2 + c^2) - c with the norm over each whole sample,
    mean reduction over the batch:

        S_b  = sum_n (pred_bn - target_bn)^2
        loss = mean_b w_b (sqrt(S_b + c^2) - c)        computed as  mean_b w_b S_b / (sqrt(S_b + c^2) + c)
        d loss / d pred_b = w_b (pred_b - target_b) / (B sqrt(S_b + c^2)) = -d loss / d target_b
        d loss / d w_b    = (sqrt(S_b + c^2) - c) / B

    The second form is the same number without the cancellation of sqrt(S + c^2) - c when S << c^2
    (iCT's c = 0.00054 sqrt(d), d = elements per sample, makes that regime common late in training).
    c = 0 gives the plain L2 norm, whose gradient is undefined (nan) where pred == target.

    Shapes: pred, target (B, ...), any float dtype; weight a float, a (B,) tensor (iCT's lambda(sigma_i)
    = 1 / (sigma_{i+1} - sigma_i)) or None (= 1). Computed in float32; returns a float32 scalar.
    """
    diff = pred.float() - target.float()
    sq = diff.square().flatten(1).sum(1)
    return weighted_mean(sq / (torch.sqrt(sq + c * c) + c), weight, pred)


def consistency_l2_loss(pred: torch.Tensor, target: torch.Tensor,
                        weight: torch.Tensor | float | None = None) -> torch.Tensor:
    """Squared L2 consistency metric (Song et al. 2023; `cm/karras_diffusion.py::consistency_losses`,
    `loss_norm="l2"`): mean_b w_b mean_n (pred_bn - target_bn)^2. Unweighted, it is LCM's `loss_type="l2"`
    (`F.mse_loss`). Shapes (B, ...); computed in float32; returns a float32 scalar."""
    return weighted_mean((pred.float() - target.float()).square().flatten(1).mean(1), weight, pred)


def lcm_huber_loss(pred: torch.Tensor, target: torch.Tensor, c: float = 0.001) -> torch.Tensor:
    """LCM's Huber loss (diffusers `train_lcm_distill_*.py`, `loss_type="huber"`, `huber_c` 0.001): the
    pseudo-Huber of each *element*, mean sqrt((pred - target)^2 + c^2) - c. Kept for parity with LCM; iCT's
    `pseudo_huber_loss` takes the norm of each whole sample instead, which the iCT paper specifies (the
    element-wise form is the consistency-training script's bug that users report never converging)."""
    diff = (pred.float() - target.float()).square()
    return (diff / (torch.sqrt(diff + c * c) + c)).mean()


def ict_weight(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """iCT's lambda(sigma_i) = 1 / (sigma_{i+1} - sigma_i) (Song & Dhariwal 2023, Sec. 3.3): neighbouring
    levels close together weigh more."""
    return 1.0 / (sigma_next.double() - sigma.double()).float()


def ect_weight(t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """ECT's 1 / (t - r) (Geng et al. 2024, `training/loss.py::ECMLoss`): the consistency residual over the
    time step it spans, a finite-difference derivative as r -> t."""
    return 1.0 / (t.double() - r.double()).float()
