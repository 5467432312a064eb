"""A VP teacher seen through EDM's parameterisation: the same function, exactly, on EDM's inputs.

A VP sample x_t = alpha(t) x0 + sigma(t) eps is alpha(t) times the EDM sample x0 + s eps at noise level
s = sigma(t) / alpha(t). So a VP network answers EDM's question D(x; s) exactly: scale x by alpha(t(s)),
run the network at the (fractional) VP time t(s), and convert its output to x0. `EDMView` does that inside
the module the toolkit wraps, and hands the `Denoiser` EDM's F = (x0 - c_skip x) / c_out, so every
recipe sees a teacher with the EDM schedule (Karras tables, sigma inputs, EDM's loss weighting) whose
predictions are the VP teacher's to float precision.

`as_edm(load_teacher("digits"))` is the shipped digits teacher as an EDM teacher (`model.teacher=digits-edm`):
what lets the digits benchmark measure choices that only differ on EDM teachers (DMD2's fake-score noise
levels, say) without training another teacher. Its sigma range is the VP schedule's that falls inside
EDM's [0.002, 80]: [0.0064, 80] for the digits teacher's cosine schedule.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .denoiser import from_x0, network_output, to_x0
from .schedules import EDM, VPDiscrete


class EDMView(nn.Module):
    """Wraps a VP-discrete network so that `self(c_in(s) x, timestep=log(s) / 4, **cond)` is EDM's F."""

    def __init__(self, net: nn.Module, vp: VPDiscrete, prediction_type: str, sigma_data: float = 0.5):
        super().__init__()
        self.net, self.vp, self.prediction_type, self.sigma_data = net, vp, prediction_type, sigma_data

    @property
    def config(self):
        return self.net.config

    @property
    def dtype(self) -> torch.dtype:
        return self.net.dtype

    @property
    def mid_block(self):  # the bottleneck the discriminator reads (`Denoiser.features`)
        return self.net.mid_block

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, **cond) -> torch.Tensor:
        s = torch.exp(4 * timestep.double()).float()  # EDM's c_noise = log(s) / 4
        view = (-1,) + (1,) * (sample.ndim - 1)
        sd2 = self.sigma_data ** 2
        x = sample.float() * torch.sqrt(s ** 2 + sd2).view(view)  # undo c_in
        t = self.vp.t_from_ratio(s)
        alpha, sigma = self.vp.alpha(t), self.vp.sigma(t)
        x_t = alpha.view(view) * x
        out = self.net(x_t.to(self.net.dtype), timestep=t, **cond)
        out = network_output(out)
        x0 = to_x0(self.prediction_type, x_t, out.float(), alpha, sigma)
        return from_x0("edm", x, x0, torch.ones_like(s), s, self.sigma_data)


def as_edm(teacher):
    """A VP teacher (`teachers.Teacher`) as the same `Teacher` with the EDM schedule (see the module): every
    other field (its folder, components, model index) is kept."""
    vp = teacher.schedule
    if not isinstance(vp, VPDiscrete):
        raise ValueError(f"teacher {teacher.source!r} has a {type(vp).__name__} schedule; an EDM view needs a "
                         "VP-discrete one")
    lo = float(vp.ratio(torch.tensor(vp.t_min, dtype=torch.float64)))
    hi = float(vp.ratio(torch.tensor(vp.t_max, dtype=torch.float64)))
    schedule = EDM(sigma_min=max(0.002, lo * (1 + 1e-6)), sigma_max=min(80.0, hi))
    config = {"_class_name": "EDMEulerScheduler", "sigma_min": schedule.sigma_min, "sigma_max": schedule.sigma_max,
              "sigma_data": schedule.sigma_data, "rho": schedule.rho, "prediction_type": "edm",
              "view_of": teacher.source}
    net = EDMView(teacher.net, vp, teacher.prediction_type, schedule.sigma_data)
    return dataclasses.replace(teacher, net=net, schedule=schedule, prediction_type="edm", scheduler_config=config,
                               source=f"{teacher.source}-edm")
