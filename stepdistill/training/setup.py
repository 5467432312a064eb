"""Building a recipe's run: accelerator and teacher, conditioning and real data, optimisers, EMA.

Everything here raises before the first training step, so bad input costs no compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, get_args

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from ..checkpointing import resolve_resume
from ..conditioning import ClassConditioner, TextConditioner
from ..data import DigitsDataset, ImageFolder, load_prompts
from ..distributed import make_accelerator
from ..latents import LatentSpace, PixelSpace
from ..trio import Teacher, load_teacher
from .sections import DataConfig, LRSchedule, TrainConfig


@dataclass
class Start:
    accelerator: Accelerator
    teacher: Teacher
    resume_from: Optional[Path]

    @property
    def shape(self) -> tuple[int, ...]:
        """One sample's shape in the teacher's space (pixels, or latents)."""
        c = self.teacher.net.config
        return (c.in_channels, c.sample_size, c.sample_size)


def start(train: TrainConfig, teacher: str, resume: str | None) -> Start:
    """The accelerator (gloo processes on a CPU machine), a checked resume point, seeds, the teacher."""
    accelerator = make_accelerator(mixed_precision=train.mixed_precision, project_dir=train.output_dir,
                                   log_with=None if train.report_to == "none" else train.report_to)
    if train.keep_checkpoints < 0:
        raise ValueError(f"train.keep_checkpoints={train.keep_checkpoints} must be >= 0 (0 keeps every checkpoint)")
    if train.batch_size % accelerator.num_processes:
        raise ValueError(f"train.batch_size={train.batch_size} is not divisible by "
                         f"{accelerator.num_processes} processes")
    resume_from = resolve_resume(resume, train.output_dir)
    set_seed(train.seed)
    return Start(accelerator, load_teacher(teacher, device=accelerator.device), resume_from)


def setup_data(data: DataConfig, teacher: Teacher, device, *, need_images: bool):
    """(conditioner, sample space, real-image dataset or None) for a class- or text-conditional teacher.

    Text-to-image: prompts from `data.prompts` (embeddings computed once and cached), the teacher's VAE
    for latents. Class-conditional pixel teachers: class labels. Real images come from `data.images`,
    or the digits for the shipped digits teacher; `need_images` (a GAN, say) makes them mandatory.
    """
    net_cfg = teacher.net.config
    if data.prompts is not None:
        conditioner = TextConditioner(load_prompts(data.prompts), teacher.load_component("tokenizer"),
                                      teacher.load_component("text_encoder"), device=device)
        space = LatentSpace(teacher.load_component("vae").to(device))
        resolution = net_cfg.sample_size * 2 ** (len(space.vae.config.block_out_channels) - 1)
    elif net_cfg.get("num_class_embeds"):
        conditioner = ClassConditioner.for_embeddings(net_cfg.num_class_embeds)
        space, resolution = PixelSpace(), net_cfg.sample_size
    else:
        raise ValueError(f"teacher {teacher.source} has no class embeddings: give data.prompts for a "
                         "text-conditional teacher")
    if not 0.0 <= data.prompt_dropout < 1.0:
        raise ValueError(f"data.prompt_dropout={data.prompt_dropout} must lie in [0, 1)")
    dataset = None
    if data.images is not None:
        dataset = ImageFolder(data.images, resolution, channels=data.image_channels)
    elif need_images and isinstance(space, PixelSpace) and net_cfg.in_channels == 1:
        dataset = DigitsDataset(resolution, split="all")
    if need_images and dataset is None:
        raise ValueError("this configuration needs real images: set data.images to an image folder")
    return conditioner, space, dataset


def make_optimizer(params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                   weight_decay: float = 0.0, warmup_steps: int = 0, eps: float = 1e-8,
                   schedule: LRSchedule = "constant", total_steps: int | None = None):
    """AdamW after a linear warm-up, then a constant learning rate or a linear / cosine decay to zero
    at `total_steps` (this optimiser's own steps), through diffusers' schedulers."""
    if schedule not in get_args(LRSchedule):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {get_args(LRSchedule)}")
    if schedule != "constant" and (total_steps is None or total_steps <= warmup_steps):
        raise ValueError(f"a {schedule} decay needs total_steps > warmup_steps={warmup_steps}; got {total_steps}")
    opt = torch.optim.AdamW(list(params), lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
    name = "constant_with_warmup" if schedule == "constant" else schedule
    return opt, get_scheduler(name, opt, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def make_ema(params: list[torch.nn.Parameter], decay: float | None, accelerator: Accelerator) -> EMAModel | None:
    """diffusers' `EMAModel` of the generator, registered so checkpoints carry it (None: no EMA)."""
    if not decay:
        return None
    ema = EMAModel(params, decay=decay)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


def optimizer_step(accelerator: Accelerator, loss: torch.Tensor, params: list[torch.nn.Parameter], opt, sched, *,
                   grad_clip: float | None, nan_to_num: bool = False) -> None:
    """Backward, optionally zero NaN/inf gradients (SiD's `nan_to_num` on every gradient), clip, step."""
    accelerator.backward(loss)
    if nan_to_num:
        for p in params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
    if grad_clip is not None:
        accelerator.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def begin(accelerator: Accelerator, resume_from: Path | None, cfg) -> int:
    """Restore a checkpoint (returns its step, else 0) and write the run's config next to its outputs."""
    from ..checkpointing import load_checkpoint
    from ..config import save_config

    start_step = load_checkpoint(accelerator, resume_from) if resume_from else 0
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        save_config(cfg, out / "config.yaml")
    return start_step
