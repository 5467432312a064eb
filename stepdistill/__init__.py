"""stepdistill: diffusion step distillation on one teacher / fake-score / generator trio."""

from .denoiser import Denoiser, from_x0, to_eps, to_flow, to_score, to_v, to_x0
from .guidance import CFGDenoiser
from .schedules import EDM, NoiseSchedule, RectifiedFlow, VPDiscrete, from_scheduler_config

__version__ = "0.1.0"

__all__ = [
    "CFGDenoiser", "Denoiser", "from_x0", "to_eps", "to_flow", "to_score", "to_v", "to_x0",
    "EDM", "NoiseSchedule", "RectifiedFlow", "VPDiscrete", "from_scheduler_config",
]
