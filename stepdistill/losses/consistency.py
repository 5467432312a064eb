"""Consistency losses (Song et al. 2023; iCT, Song & Dhariwal 2023). The pseudo-Huber metric is the
specification of the fused kernel `stepdistill_kernels.pseudo_huber`."""

from __future__ import annotations

import torch

from .weights import per_sample


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
    per = sq / (torch.sqrt(sq + c * c) + c)
    if weight is None:
        return per.mean()
    return (per_sample(weight, pred.shape[0], pred) * per).mean()
