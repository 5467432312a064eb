"""Super-resolution distillation losses: TAD-SR (He et al. 2024, "One Step Diffusion-based Super-Resolution with
Time-Aware Distillation", arXiv:2408.07476; official code `models/gaussian_diffusion.py::training_losses_distill`
and `training_losses_D`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hsd_loss(x: torch.Tensor, eps_student: torch.Tensor, eps_teacher: torch.Tensor) -> torch.Tensor:
    """High-frequency score distillation (TAD-SR Sec. 3.2): the student's image x and the teacher's multistep
    output x_T are noised with the *same* noise to a small level t; the teacher's noise predictions there,
    eps(x_t) and eps(x_T,t), differ only by what separates the two images, mostly fine detail at small t. The
    gradient sg(eps(x_t) - eps(x_T,t)) is fed to x through the surrogate mean(grad * x) (the official
    `loss = mean(grad * x0_student)`): descending it moves x along -(eps(x_t) - eps(x_T,t)), towards x_T's
    side of the teacher's score field. Shapes (B, ...); returns a float32 scalar."""
    grad = (eps_student.detach().float() - eps_teacher.detach().float())
    return (grad * x.float()).mean()


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))): TAD-SR's discriminator loss (hinge)."""
    return F.relu(1 - logits_real.float()).mean() + F.relu(1 + logits_fake.float()).mean()


def hinge_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean(D(fake)): TAD-SR's generator GAN loss."""
    return -logits_fake.float().mean()
