"""Train the teachers of `assets/`: the class-conditional digits teacher (`assets/digits_teacher`), the control
teacher trained on the held-out digits only (`assets/digits_teacher_heldout`, `load_teacher("digits-heldout")`), and
the super-resolution teachers on natural-image patches (`assets/sr_teacher`, x4, and `assets/sr_x2_teacher`, x2,
loaded as `load_teacher("sr")` / `("sr-x2")`; about 16 CPU minutes each).

    accelerate launch recipes/train_teacher.py              # the shipped digits teacher (~30 CPU minutes)
    python recipes/train_teacher.py train.max_steps=200 output_dir=outputs/teacher   # a quick check
    python recipes/train_teacher.py split=heldout output_dir=assets/digits_teacher_heldout  # the control teacher
    python recipes/train_teacher.py --config recipes/configs/train_teacher/sr_x4.yaml  # the x4 SR teacher
    python recipes/train_teacher.py --config recipes/configs/train_teacher/sr_x2.yaml  # the x2 one (YONOS-SR)

A diffusers `UNet2DModel` with class embeddings (label 10 is the null label for classifier-free
guidance, dropped in 10% of the time) on a cosine VP schedule with v-prediction (Nichol & Dhariwal
2021, Eq. 17; Salimans & Ho 2022). The loss is the usual MSE in the network's own
parameterisation, written as a weighted x0 error through the shared `Denoiser` (see
`native_loss_weight`). EMA weights (diffusers `EMAModel`) are what gets saved.

Super-resolution (`data=patches`): the same network and loss, conditioned on the low-resolution patch instead of a
class: the patch degraded by `model.sr_scale` (`stepdistill.degradations`, bicubic), upsampled back bicubically to y
and concatenated to the scaled x_t (SR3's conditioning, `stepdistill.conditioning.LRConditioner`). By default the
network models the residual x0 - y (SRDiff's residual; `Denoiser(residual=True)`): it sees x_t - alpha y and
predicts the missing detail, so it starts at bicubic quality instead of having to learn to carry the LR content
through (a small network that had to, at 3,000 steps, stayed 5 dB below bicubic; experiments/tuning/README.md). Both
keep the teacher an ordinary diffusion model of x0 under the usual forward process, so every sampler, recipe and export
applies unchanged; ResShift's residual shifting would need a forward process of its own. `model_index.json` records
`sr_scale` and `sr_residual`, which the recipes and the export read.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from stepdistill.conditioning import ClassConditioner, LRConditioner
from stepdistill.config import load_config, save_config, to_dict
from stepdistill.data import DigitsDataset, IndexLabelled, PatchDataset, Split
from stepdistill.degradations import Degradation
from stepdistill.denoiser import Denoiser, native_loss_weight
from stepdistill.io import atomic_dir, atomic_write_text
from stepdistill.schedules import from_scheduler_config
from stepdistill.time_sampling import UniformTime


@dataclass
class ModelConfig:
    resolution: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    # Self-attention only at the coarsest (4x4) level: at 16x16 it buys little and costs a lot on CPU.
    down_block_types: tuple[str, ...] = ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D")
    # GroupNorm groups; keep >= 2 channels per group at the first level: with one, every norm removes each
    # feature map's own mean, and the network can no longer carry a condition's absolute intensities through
    norm_num_groups: int = 16
    num_classes: int = 10  # digits
    sr_scale: int = 4  # patches: the low-resolution condition's downsampling factor
    # patches: model the residual over the bicubic upsample (`Denoiser(residual=True)`), recorded in
    # model_index.json as `sr_residual`
    sr_residual: bool = True
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"


@dataclass
class TrainConfig:
    max_steps: int = 6000
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    label_dropout: float = 0.1
    ema_max_decay: float = 0.9995
    seed: int = 0
    log_every: int = 100


@dataclass
class TeacherConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # "all" for the shipped teacher. "heldout" trains the control teacher, which never sees the FD reference
    # images: a teacher far from its data, as teachers of real data are. Recorded in train_config.yaml, where the
    # recipes read which digits a teacher's real images (a GAN's) may come from (`data.training_split`).
    split: Split = "all"
    # "digits": the class-conditional digits teacher; "patches": a super-resolution teacher on the natural-image
    # training patches (`stepdistill.data.patches`), conditioned on their low-resolution copies
    data: Literal["digits", "patches"] = "digits"
    patches: int = 8192
    output_dir: str = "assets/digits_teacher"


def build_unet(m: ModelConfig, *, channels: int = 1, condition_channels: int = 0,
               num_class_embeds: int | None = None) -> UNet2DModel:
    return UNet2DModel(
        sample_size=m.resolution, in_channels=channels + condition_channels, out_channels=channels,
        block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
        down_block_types=m.down_block_types,
        up_block_types=tuple(b.replace("Down", "Up") for b in reversed(m.down_block_types)),
        num_class_embeds=num_class_embeds, norm_num_groups=m.norm_num_groups, attention_head_dim=32,
    )


def data_and_condition(cfg: TeacherConfig):
    """(dataset, conditioner, image channels): digits and their classes (+ the null label), or natural-image
    patches and their low-resolution copies."""
    m = cfg.model
    if cfg.data == "digits":
        return DigitsDataset(m.resolution, split=cfg.split), ClassConditioner.for_embeddings(m.num_classes + 1), 1
    if cfg.split != "all":
        raise ValueError(f"split={cfg.split} selects digits; the patches' test images are always held out")
    degradation = Degradation(m.sr_scale)
    patches = IndexLabelled(PatchDataset(m.resolution, scale=m.sr_scale, num_patches=cfg.patches, split="train",
                                         seed=cfg.train.seed, degradation=degradation))
    return patches, LRConditioner(patches, degradation, channels=3), 3


def main(cfg: TeacherConfig) -> None:
    accelerator = Accelerator()
    torch.manual_seed(cfg.train.seed)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.model.beta_schedule,
                              prediction_type=cfg.model.prediction_type, clip_sample=False)
    schedule, prediction_type = from_scheduler_config(scheduler)
    data, conditioner, channels = data_and_condition(cfg)
    unet = build_unet(cfg.model, channels=channels, condition_channels=getattr(conditioner, "extra_channels", 0),
                      num_class_embeds=cfg.model.num_classes + 1 if cfg.data == "digits" else None)
    denoiser = Denoiser(unet, schedule, prediction_type, residual=cfg.data == "patches" and cfg.model.sr_residual)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    lr_sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.train.warmup_steps,
                             num_training_steps=cfg.train.max_steps)
    denoiser, opt, loader, lr_sched = accelerator.prepare(denoiser, opt, loader, lr_sched)
    ema = EMAModel(unet.parameters(), decay=cfg.train.ema_max_decay, use_ema_warmup=True, power=0.75)
    times = UniformTime()

    def batches():
        while True:
            yield from loader

    start, log, it = time.time(), [], batches()
    bar = tqdm(range(cfg.train.max_steps), desc="teacher", disable=not accelerator.is_main_process)
    for step in bar:
        batch = next(it)
        x0, labels = batch["images"], batch["class_labels"]
        # 1. Drop conditions to the null one so the same network is also the unconditional model.
        labels = conditioner.drop(labels, cfg.train.label_dropout)
        # 2. Noise at a uniform time and predict x0; weight so the loss is the v-prediction MSE.
        t = times.sample(schedule, x0.shape[0], device=x0.device)
        eps = torch.randn_like(x0)
        x_t = schedule.add_noise(x0, eps, t)
        x0_hat = denoiser(x_t, t, **conditioner.cond(labels))
        w = native_loss_weight(prediction_type, schedule.alpha(t), schedule.sigma(t))
        loss = (w.view(-1, 1, 1, 1) * (x0_hat - x0) ** 2).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), cfg.train.grad_clip)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        log.append(loss.item())
        if (step + 1) % cfg.train.log_every == 0:
            mean = sum(log[-cfg.train.log_every:]) / cfg.train.log_every
            bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr_sched.get_last_lr()[0]:.1e}")

    if accelerator.is_main_process:
        net = accelerator.unwrap_model(denoiser).net
        ema.copy_to(net.parameters())
        minutes = (time.time() - start) / 60
        with atomic_dir(cfg.output_dir) as out:
            net.save_pretrained(out / "unet")
            scheduler.save_pretrained(out / "scheduler")
            if cfg.data == "patches":  # what the recipes read to rebuild the condition
                index = {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", "DDPMScheduler"],
                         "sr_scale": cfg.model.sr_scale, "sr_residual": cfg.model.sr_residual}
                atomic_write_text(out / "model_index.json", json.dumps(index, indent=2) + "\n")
            save_config(cfg, out / "train_config.yaml")
            summary = dict(command="python " + " ".join(sys.argv), minutes=round(minutes, 1),
                           final_loss=sum(log[-500:]) / len(log[-500:]),
                           parameters=sum(p.numel() for p in net.parameters()), config=to_dict(cfg))
            atomic_write_text(out / "training.json", json.dumps(summary, indent=2) + "\n")
        print(f"saved EMA teacher to {cfg.output_dir} after {minutes:.1f} min "
              f"(final loss {summary['final_loss']:.4f})")


if __name__ == "__main__":
    main(load_config(TeacherConfig))
