"""The real-model run, proven at full size on a CPU: Stable Diffusion 1.5 of the real shapes (UNet 859.5 M, the SD VAE,
CLIP-L), random weights built offline from `assets/model_configs/sd15`, trained for a few steps by the project's own
recipes through their normal code path, exported, and loaded back with stock diffusers; with each recipe's peak
memory against the footprint every run prints, and its step time against the network passes it cannot avoid.

    python eval/full_size_cpu.py                      # ~8 minutes on 2 free cores; 16 GiB of RAM (13 GB peak)
    python eval/full_size_cpu.py --workdir /scratch/fs --steps 1 --pass-repeats 2

Each part runs in a fresh process of its own, so that peaks do not mix (`--only PART` runs one):

1. `build`: the SD 1.5 pipeline of the real shapes (`stepdistill.model_configs.build`), random init, float32, saved
   as a diffusers folder (`StableDiffusionPipeline`, no safety checker; 4.3 GB) with the hub repository's scheduler
   config and the CLIP tokenizer the tiny pipelines build offline (`stepdistill.tiny.vocab`: every id lies in the
   49,408-token encoder's range); and a folder of random 256x256 PNGs (the real images).
2. `dmd2`: `recipes/dmd2.py`'s `setup` and `step` under `recipes/configs/dmd2/sd15.yaml` (its GAN with
   `loss.gan_balance=null`, `fake_samples=shared`, gradient checkpointing) with a LoRA generator and a LoRA fake score
   (rank 16), `optim.update_ratio=1` (every step updates the generator) and `optim.warmup_steps=0` (the first steps
   move the weights), at `data.resolution=256` (32x32 latents), batch 2, one process, `train.mixed_precision=bf16`
   (CPU bf16 autocast: the frozen networks held in bf16, the trained roles in float32), prompts
   `assets/prompts/smoke.txt`.
3. `lcm`: `recipes/consistency_distill.py`'s `setup` and `step` under `recipes/configs/consistency_distill/
   sd15_lora.yaml` (LCM-LoRA: rank 64 on LCM's modules, online target, Huber, w = 6.5), `loss.states=real`, the same
   size, batch, precision and warm-up.
   Each recipe: the footprint (`stepdistill.training.footprint.footprint(run)`, what the run prints), one warm-up step
   and `--steps` steps under the memory watch, one profiled step (`profiled_step`: where its time goes), then
   `--pass-repeats` speed rounds of one more step and each of its network passes alone (the step's own modules,
   autocast and draws; paired, so that the machine's drift touches both alike); then the export as `run_recipe`
   ends (`Student.export`: `stepdistill.export.students.export_student`; merged, and the LoRA as `lora/`).
4. `load`: each export loaded with stock diffusers (`DiffusionPipeline.from_pretrained`; the LoRA also through
   `load_lora_weights` on the base pipeline with the scheduler line of its card) and sampled at 256x256 with its
   card's arguments: the image must be finite.
5. `sdxl`: the SDXL UNet (2.57 B) from `assets/model_configs/sdxl`, built in bf16 directly (10.3 GB in float32), one
   forward at 32x32 latents, batch 1, under bf16 autocast, timed after a warm-up forward.

Memory: the peak resident set of each step (the kernel's high-water mark, reset before the step through
/proc/self/clear_refs and read as `resource.getrusage(RUSAGE_SELF).ru_maxrss`; a psutil sampler thread where the
reset is not permitted), against the footprint's parameters + gradients + optimiser states + EMA + activations; the
resident set after the imports (the runtime) and between steps, the live tensors and what `malloc_trim` returns, to
say what the gap is made of. Speed: seconds per step (`time.perf_counter`, the mean of the timed steps) against the
sum of the passes' means, with the cores the process had (CPU time over wall time), the cores other processes took
meanwhile, and its page faults. Both ratios are the issue's goals (the estimate within 15% of the peak; a step <=
1.10x its passes), recorded, not gated; `notes` says what a gap is made of. Results: `eval/results/full_size_cpu.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "recipes")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here reaches a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OUT = ROOT / "eval" / "results" / "full_size_cpu.json"
PROMPTS = ROOT / "assets" / "prompts" / "smoke.txt"
DMD2_PRESET = ROOT / "recipes" / "configs" / "dmd2" / "sd15.yaml"
LCM_PRESET = ROOT / "recipes" / "configs" / "consistency_distill" / "sd15_lora.yaml"
MIB = 2 ** 20
RESOLUTION = 256  # 32x32 latents
BATCH = 2
LORA_RANK = 16  # DMD2's generator and fake score (the LCM-LoRA keeps its preset's 64)


# ----------------------------------------------------------------------------
# Memory.

def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's resident set (Linux >= 4.0: `5 > clear_refs`), so
    that `ru_maxrss` and VmHWM report the peak from here on; False where it is not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak resident set (MiB) over a block: `ru_maxrss` after resetting the kernel's high-water mark on entry
    (`kernel`: exact, and no thread beside the work it measures); only where the reset is not permitted, a psutil
    sampler thread (`sampled`, every `interval` seconds: a lower bound)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.sampled, self.kernel, self.reset = interval, None, None, False
        self._stop = threading.Event()
        self._thread = None

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.sampled = max(self.sampled, proc.memory_info().rss / MIB)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.reset = reset_peak()
        if not self.reset:
            self.sampled = rss_mib()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        if self.reset:  # ru_maxrss is in KiB on Linux
            self.kernel = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @property
    def method(self) -> str:
        return ("the kernel's high-water mark (reset through /proc/self/clear_refs, read as ru_maxrss)" if self.reset
                else f"psutil sampling every {self.interval * 1000:g} ms (a lower bound)")

    @property
    def peak(self) -> float:
        return self.kernel if self.reset else self.sampled


# ----------------------------------------------------------------------------
# The full-size pipeline, offline.

def build_sd15(folder: Path, *, seed: int = 0) -> Path:
    """Write a Stable Diffusion 1.5 pipeline of the real shapes with random weights (float32, safetensors) to
    `folder` and return it: the UNet, VAE and CLIP-L text encoder from `assets/model_configs/sd15`, its scheduler
    config, and the offline CLIP tokenizer of the tiny pipelines (ids < its 49,408-token vocabulary). A folder with a
    model_index.json already there is returned as it is."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from stepdistill.io import atomic_dir
    from stepdistill.model_configs import MODEL_CONFIGS, build
    from stepdistill.tiny.vocab import clip_tokenizer

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    tokenizer = clip_tokenizer()
    parts = {}
    with torch.random.fork_rng(devices=[]):
        for i, name in enumerate(("unet", "vae", "text_encoder")):
            torch.manual_seed(seed + i)
            parts[name] = build("sd15", name, device="cpu")
    vocab = parts["text_encoder"].config.vocab_size
    if max(tokenizer.get_vocab().values()) >= vocab:
        raise ValueError(f"the offline tokenizer's ids exceed the text encoder's {vocab}-token vocabulary")
    scheduler = PNDMScheduler.from_pretrained(MODEL_CONFIGS["sd15"], subfolder="scheduler")
    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=tokenizer,
                                   unet=parts["unet"], scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def random_images(folder: Path, n: int = 4, size: int = RESOLUTION, seed: int = 0) -> Path:
    """`n` random RGB PNGs of `size` x `size` (the GAN's and the consistency states' real images)."""
    import numpy as np
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"{i}.png"
        if not path.is_file():
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return folder


# ----------------------------------------------------------------------------
# The recipes' configs.

def dmd2_config(teacher: Path, images: Path, out: Path, *, resolution: int = RESOLUTION, batch: int = BATCH,
                rank: int = LORA_RANK, extra: tuple[str, ...] = ()):
    """The SD 1.5 preset of DMD2 with a LoRA generator and a LoRA fake score, every step a generator step, on CPU."""
    import dmd2

    from stepdistill.config import load_config

    return load_config(dmd2.DMD2Config, [
        "--config", str(DMD2_PRESET), f"model.teacher={teacher}", f"data.prompts={PROMPTS}", f"data.images={images}",
        f"data.resolution={resolution}", f"train.batch_size={batch}", "train.micro_batch_size=null",
        "train.mixed_precision=bf16", f"model.generator_lora_rank={rank}", f"model.fake_score_lora_rank={rank}",
        "optim.update_ratio=1", "loss.gan_balance=null", "optim.warmup_steps=0", f"train.output_dir={out}",
        "train.max_steps=10",
        "train.time_limit_minutes=null", "eval.enabled=false", "export.enabled=true", *extra])


def lcm_config(teacher: Path, images: Path, out: Path, *, resolution: int = RESOLUTION, batch: int = BATCH,
               extra: tuple[str, ...] = ()):
    """The SD 1.5 LCM-LoRA preset (its own settings: rank 64, online target, Huber, w = 6.5) on real images, on CPU."""
    import consistency_distill as cd

    from stepdistill.config import load_config

    return load_config(cd.ConsistencyDistillConfig, [
        "--config", str(LCM_PRESET), f"model.teacher={teacher}", f"data.prompts={PROMPTS}", f"data.images={images}",
        f"data.resolution={resolution}", f"train.batch_size={batch}", "train.micro_batch_size=null",
        "train.mixed_precision=bf16", "loss.states=real", "optim.warmup_steps=0", f"train.output_dir={out}",
        "train.max_steps=10",
        "train.time_limit_minutes=null", "eval.enabled=false", "export.enabled=true", *extra])


# ----------------------------------------------------------------------------
# Timing.

class Usage:
    """What a block of work cost: this process's wall seconds (`time.perf_counter`), CPU seconds (user + system, all
    threads), system seconds and minor page faults (`getrusage`); and the whole machine's busy and stolen CPU seconds
    (/proc/stat), so that `usage_summary` tells the cores this process had from those other processes took."""

    def __enter__(self) -> Usage:
        self._start = self._now()
        return self

    @staticmethod
    def _machine() -> tuple[float, float]:
        """(busy, steal) CPU seconds of the machine since boot: all but idle and iowait; the hypervisor's steal."""
        try:
            ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return 0.0, 0.0
        hz = os.sysconf("SC_CLK_TCK")
        steal = ticks[7] if len(ticks) > 7 else 0
        return (sum(ticks[:8]) - ticks[3] - ticks[4] - steal) / hz, steal / hz

    @classmethod
    def _now(cls) -> tuple[float, ...]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return (time.perf_counter(), r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt, *cls._machine())

    def __exit__(self, *exc) -> None:
        end = self._now()
        self.wall, self.cpu, self.sys, self.faults, self.busy, self.steal = (b - a for a, b in zip(self._start, end))


def usage_summary(usages: list[Usage]) -> dict:
    """Over `usages`: the cores this process used (CPU / wall), the cores other processes used meanwhile (the
    machine's busy CPU less this process's), the hypervisor's steal, the system-time share and the page faults."""
    wall = sum(u.wall for u in usages)
    cpu = sum(u.cpu for u in usages)
    return {"cores_used": round(cpu / wall, 2),
            "other_processes_cores": round(max(sum(u.busy for u in usages) - cpu, 0.0) / wall, 2),
            "steal_cores": round(sum(u.steal for u in usages) / wall, 2),
            "system_share": round(sum(u.sys for u in usages) / max(cpu, 1e-9), 3),
            "minor_faults_per_second": round(sum(u.faults for u in usages) / wall)}


RECORDED: dict[str, list[Usage]] = {}  # the passes' usage, by name (each part runs in a process of its own)


def timed(fn, repeats: int, name: str | None = None) -> list[float]:
    """Seconds of each of `repeats` calls of `fn()` (CPU ops are synchronous); their usage under `name`."""
    seconds = []
    for _ in range(repeats):
        with Usage() as u:
            fn()
        seconds.append(u.wall)
        RECORDED.setdefault(name or fn.__name__, []).append(u)
    return seconds


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def median(values) -> float:
    import statistics

    return statistics.median(values)


def malloc_trim() -> bool:
    """Return the C heap's free memory to the system (glibc's `malloc_trim(0)`); False where there is none."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def live_tensor_mib(modules, optimizers) -> dict:
    """The bytes held by the networks' parameters and buffers and the optimisers' states, each storage once."""
    import torch

    seen: dict[int, int] = {}

    def add(t) -> None:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            storage = t.untyped_storage()
            seen.setdefault(storage.data_ptr(), storage.nbytes())

    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            add(t)
            add(t.grad)
    weights = sum(seen.values())
    for opt in optimizers:
        for state in opt.state.values():
            for v in state.values():
                add(v)
    return {"weights_and_grads": round(weights / MIB, 1),
            "optimizer_states": round((sum(seen.values()) - weights) / MIB, 1)}


def profile_step(fn, top: int = 25) -> dict:
    """One step under cProfile: its seconds and the project's, autograd's and the optimiser's calls by cumulative
    time (what the step spends where; profiling adds a little Python overhead, so it is not a timed step)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    fn()
    profiler.disable()
    seconds = time.perf_counter() - start
    keep = ("/stepdistill/", "/recipes/", "torch/autograd/__init__.py", "torch/optim/adamw.py", "torch/optim/adam.py",
            "accelerate/accelerator.py", "data/folders.py")
    rows = []
    for (path, line, func), (_, calls, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        if any(k in path for k in keep) and cumulative >= 0.05:
            short = path.split("/site-packages/")[-1].split("/work/main/")[-1]
            rows.append((cumulative, f"{short}:{line}({func})", calls))
    rows.sort(reverse=True)
    return {"seconds": round(seconds, 2),
            "cumulative_seconds": [{"where": w, "calls": c, "seconds": round(t, 2)} for t, w, c in rows[:top]]}


def zero_grads(*opts) -> None:
    for opt in opts:
        opt.zero_grad(set_to_none=True)


def dmd2_passes(run, seed: int = 12345) -> tuple[dict, object]:
    """Each network pass of a DMD2 step (LoRA generator, LoRA fake score, GAN, `fake_samples=shared`, generator every
    step) as a function that runs it alone on the step's own modules and autocast, with inputs drawn as the step
    draws them (gradients cleared after each); and a function timing the optimiser updates (not network passes:
    reported beside)."""
    import torch

    from stepdistill.training import Draw, dmd

    cfg, s = run.cfg, run.setup
    acc, schedule, shape, conditioner = s.accelerator, s.schedule, s.shape, s.conditioner
    draw = Draw(acc, cfg.train.batch_size, seed, step=0)
    labels = draw.labels(conditioner)
    cond, uncond = conditioner.cond(labels), conditioner.uncond(labels)
    fake, head = s.unwrap(run.fake_score), s.unwrap(run.head)
    z = draw.randn(*shape)
    with torch.no_grad():
        x = run.generator(z, **cond).detach()
    upstream = torch.randn_like(x)  # the loss's gradient on G's samples
    t = draw.times(dmd.DiscreteRange(cfg.loss.min_step, cfg.loss.max_step, inclusive=True), schedule)
    x_t = schedule.add_noise(x, draw.randn(*shape), t)
    t_g = draw.times(dmd.UniformTime(0.0, cfg.loss.gan_max_t), schedule)
    noised_g = schedule.add_noise(x, draw.randn(*shape), t_g)
    gan_cond = cond if s.labelled_real else conditioner.cond(torch.full_like(labels, -1))
    t_f = draw.times(dmd.fake_score_times(cfg.loss.fake_times), schedule)
    x_f = schedule.add_noise(x, draw.randn(*shape), t_f)
    weight = dmd.native_loss_weight(s.teacher.prediction_type, schedule.alpha(t_f), schedule.sigma(t_f))
    real_images, real_labels = draw.real(s.real)
    with torch.no_grad():
        real = s.space.encode(real_images)
    fake_labels = labels if real_labels is not None else torch.full_like(labels, -1)
    real_labels = real_labels if real_labels is not None else fake_labels
    gan_times = dmd.UniformTime(0.0, cfg.loss.gan_max_t)
    t_d = torch.cat([draw.times(gan_times, schedule), draw.times(gan_times, schedule)])
    noised_d = schedule.add_noise(torch.cat([real, x]), torch.cat([draw.randn(*shape), draw.randn(*shape)]), t_d)
    both = conditioner.cond(torch.cat([real_labels, fake_labels]))

    def generator_forward_backward():
        with dmd.frozen_critics(run):
            acc.backward((run.generator(z, **cond) * upstream).sum())
        zero_grads(run.opt_g)

    def real_score_guided_forward():
        with torch.no_grad():
            run.real_guided(x_t, t, uncond=uncond, **cond)

    def fake_score_forward():  # the generator update's: no graph
        with dmd.frozen_critics(run), torch.no_grad():
            run.fake_score(x_t, t, **cond)

    def gan_generator_features_head_forward_backward():  # input gradients only, critics frozen
        with dmd.frozen_critics(run):
            xg = noised_g.detach().requires_grad_(True)
            acc.backward(dmd.losses.generator_gan_loss(head(fake.features(xg, t_g, **gan_cond))))

    def fake_score_forward_backward():
        acc.backward(dmd.losses.denoising_loss(run.fake_score(x_f, t_f, **cond), x, weight))
        zero_grads(run.opt_f)

    def vae_encode_real():
        s.space.encode(real_images)

    def gan_discriminator_features_head_forward_backward():  # real + generated: 2x the batch
        logits_real, logits_fake = run.head(fake.features(noised_d, t_d, **both)).chunk(2)
        acc.backward(cfg.loss.gan_discriminator_weight * dmd.losses.discriminator_loss(logits_real, logits_fake))
        zero_grads(run.opt_f)

    passes = {
        "generator update: generator forward + backward": generator_forward_backward,
        "generator update: real score (teacher, guided) forward": real_score_guided_forward,
        "generator update: fake score forward": fake_score_forward,
        "generator update: GAN fake-score features + head forward + backward":
            gan_generator_features_head_forward_backward,
        "fake-score update: fake score forward + backward": fake_score_forward_backward,
        "fake-score update: VAE encode of the real images": vae_encode_real,
        "fake-score update: GAN fake-score features + head forward + backward (real + generated)":
            gan_discriminator_features_head_forward_backward,
    }
    def generator_update():
        with dmd.frozen_critics(run):
            acc.backward((run.generator(z, **cond) * upstream).sum())
        start = time.perf_counter()
        dmd.update_generator(run)
        return time.perf_counter() - start

    def fake_update():
        acc.backward(dmd.losses.denoising_loss(run.fake_score(x_f, t_f, **cond), x, weight))
        start = time.perf_counter()
        dmd.update_fake_score(run)
        return time.perf_counter() - start

    def updates() -> dict:
        return {"generator optimiser update (clip + AdamW)": generator_update(),
                "fake-score + head optimiser update (clip + AdamW)": fake_update()}

    return passes, updates


def lcm_passes(run, seed: int = 12345) -> tuple[dict, object]:
    """Each network pass of an LCM-LoRA step (online target, real states), timed alone as `dmd2_passes` does."""
    import consistency_distill as cd
    import torch

    from stepdistill.training import Draw, trainable_params, update

    cfg, s = run.cfg, run.setup
    acc, lo = s.accelerator, cfg.loss
    draw = Draw(acc, cfg.train.batch_size, seed, step=0)
    level = draw.index(len(run.grid) - 1).to(s.device)
    level = torch.clamp(level, min=1)  # off the boundary pair, so the target pass counts (as at 49 of 50 levels)
    w = lo.w_min + (lo.w_max - lo.w_min) * draw.rand()
    images, labels = draw.real(s.real)
    labels = labels if labels is not None else draw.labels(s.conditioner)
    grid = run.grid.to(s.device)
    start, end = grid[level + 1], grid[level]
    with torch.no_grad():
        x = s.schedule.add_noise(s.space.encode(images), draw.randn(*s.shape), start.float())
        x_prev = cd.solver(cfg)(cd.guided_teacher(run, w, labels), cd.solver_schedule(cfg, s), x, start, end)
    cond = s.conditioner.cond(labels)
    target_net = run.target if run.target is not None else s.unwrap(run.generator)
    with torch.no_grad():
        target = target_net(x_prev, end.float(), **cond)

    def vae_encode_real():
        s.space.encode(images)

    def teacher_guided_solver_step():
        with torch.no_grad():
            cd.solver(cfg)(cd.guided_teacher(run, w, labels), cd.solver_schedule(cfg, s), x, start, end)

    def student_forward_backward():
        acc.backward(cd.consistency_metric(run, run.generator(x, start.float(), **cond), target))
        zero_grads(run.opt)

    def target_forward():
        with torch.no_grad():
            target_net(x_prev, end.float(), **cond)

    passes = {"VAE encode of the real images": vae_encode_real,
              "teacher's guided solver step (DDIM, w = 6.5: conditional + unconditional)": teacher_guided_solver_step,
              "student forward + backward": student_forward_backward,
              "target forward (the student under no_grad)": target_forward}

    def updates() -> dict:
        acc.backward(cd.consistency_metric(run, run.generator(x, start.float(), **cond), target))
        begin = time.perf_counter()
        update(acc, trainable_params(run.generator), run.opt, run.sched, grad_clip=cfg.optim.grad_clip)
        return {"optimiser update (clip + AdamW)": time.perf_counter() - begin}

    return passes, updates


def merged_export_error(net, adapter: str, teacher: Path, export: Path) -> dict:
    """How exactly the merged export carries the trained LoRA: the exported UNet's weights of the LoRA-targeted
    layers against the float32 merge (the teacher's float32 weights from its folder + the adapter's delta computed
    in float32), relative to the delta itself (0: exact; 1: an error as large as what training changed)."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open

    def open_unet(folder: Path):
        return safe_open(str(next((Path(folder) / "unet").glob("*.safetensors"))), "pt")

    ratios, dtypes = [], set()
    with open_unet(teacher) as base, open_unet(export) as out, torch.no_grad():
        for name, layer in net.named_modules():
            if not isinstance(layer, BaseTunerLayer) or adapter not in getattr(layer, "lora_A", {}):
                continue
            key = name + ".weight"
            delta = layer.get_delta_weight(adapter).float()
            exact = base.get_tensor(key).float() + delta
            got = out.get_tensor(key)
            dtypes.add(str(got.dtype))
            if float(delta.norm()) > 0:
                ratios.append(float((got.float() - exact).norm() / delta.norm()))
    ratios.sort()
    return {"exported_dtype": sorted(dtypes), "lora_layers": len(ratios),
            "error_over_delta_median": ratios[len(ratios) // 2] if ratios else None,
            "error_over_delta_max": ratios[-1] if ratios else None}


# ----------------------------------------------------------------------------
# The parts, each run in a process of its own.

def count(params) -> int:
    return sum(p.numel() for p in params)


def part_build(args) -> dict:
    start = time.perf_counter()
    folder = build_sd15(Path(args.workdir) / "sd15")
    random_images(Path(args.workdir) / "images", size=args.resolution)
    from stepdistill.model_configs import parameter_count

    return {"folder": str(folder), "seconds": round(time.perf_counter() - start, 1),
            "parameters": {c: parameter_count("sd15", c) for c in ("unet", "vae", "text_encoder")},
            "bytes_on_disk": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())}


def train_part(args, name: str) -> dict:
    """setup, the footprint, one warm-up + `args.steps` timed steps under the peak-memory watch, each pass timed,
    then the export."""

    # the runtime, resident before any network is built: the baseline
    import consistency_distill  # noqa: F401
    import diffusers  # noqa: F401
    import dmd2  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from stepdistill.training import footprint as _  # noqa: F401

    baseline = rss_mib()
    work = Path(args.workdir)
    teacher = Path(args.teacher) if args.teacher else work / "sd15"
    images = random_images(work / "images", size=args.resolution)
    if name == "dmd2":
        import dmd2 as recipe

        cfg = dmd2_config(teacher, images, work / "run_dmd2", resolution=args.resolution)
    else:
        import consistency_distill as recipe

        cfg = lcm_config(teacher, images, work / "run_lcm", resolution=args.resolution)
    from stepdistill.training import Draw, trainable_params
    from stepdistill.training.footprint import footprint, format_footprint

    started = time.perf_counter()
    run = recipe.setup(cfg)
    setup_seconds = time.perf_counter() - started
    s = run.setup
    report = footprint(run)
    print(format_footprint(report), flush=True)
    roles = [run.generator, run.fake_score, run.head] if name == "dmd2" else [run.generator]
    trained = trainable_params(*roles)
    teacher_base = [p for n, p in s.teacher.net.named_parameters() if "lora_" not in n]
    adapters = [p for n, p in s.teacher.net.named_parameters() if "lora_" in n]
    dtypes = {"teacher_base": sorted({str(p.dtype) for p in teacher_base}),
              "teacher_lora_adapters": sorted({str(p.dtype) for p in adapters}),
              "trained": sorted({str(p.dtype) for p in trained}),
              "text_encoder": sorted({str(p.dtype) for p in s.conditioner.encoder.text_encoder.parameters()}),
              "vae": sorted({str(p.dtype) for p in s.space.vae.parameters()})}
    if name == "dmd2":
        gen_net = s.unwrap(run.generator).net
        dtypes["generator_base"] = sorted({str(p.dtype) for n, p in gen_net.named_parameters() if "lora_" not in n})
    unique = {id(p): p for m in [s.teacher.net, *[s.unwrap(r) for r in roles if r is not None]] for p in m.parameters()}
    before = rss_mib()
    step_seconds, logs, peaks, after, step_usage = [], [], [], [], []
    for k in range(1 + args.steps):  # the first is the warm-up (AdamW allocates its states there)
        with PeakMemory() as memory, Usage() as used:
            logs.append(recipe.step(run, Draw(s.accelerator, cfg.train.batch_size, cfg.train.seed, k), k))
        step_seconds.append(used.wall)
        step_usage.append(used)
        peaks.append(memory.peak)
        after.append(rss_mib())
        print(f"{name} step {k}: {step_seconds[-1]:.1f} s, peak RSS {peaks[-1]:.0f} MiB {logs[-1]}", flush=True)
    peak = max(peaks)
    finite = all(math.isfinite(v) for entry in logs for v in entry.values())
    # what the resident set holds after the steps: live tensors, and the heap's free memory returned by a trim
    import gc

    gc.collect()
    optimizers = [run.opt_g, run.opt_f] if name == "dmd2" else [run.opt]
    modules = [s.teacher.net, *[s.unwrap(r) for r in roles if r is not None], s.conditioner.encoder.text_encoder,
               s.space.vae]
    live = live_tensor_mib(modules, [getattr(o, "optimizer", o) for o in optimizers])
    untrimmed = rss_mib()
    trimmed = rss_mib() if malloc_trim() else None
    k = 1 + args.steps
    profiled = profile_step(lambda: recipe.step(run, Draw(s.accelerator, cfg.train.batch_size, cfg.train.seed, k), k))
    # speed: rounds of one more step, then each of its passes alone (paired, so that the machine's drift over the
    # run touches both alike); the steps above count too
    pass_fns, updates = (dmd2_passes if name == "dmd2" else lcm_passes)(run)
    pass_times: dict[str, list[float]] = {n: [] for n in pass_fns}
    for r in range(args.pass_repeats):
        k = 2 + args.steps + r
        with Usage() as used:
            recipe.step(run, Draw(s.accelerator, cfg.train.batch_size, cfg.train.seed, k), k)
        step_seconds.append(used.wall)
        step_usage.append(used)
        print(f"{name} step {k}: {used.wall:.1f} s (speed round {r})", flush=True)
        for n, fn in pass_fns.items():
            pass_times[n] += timed(fn, 1, n)
    other = updates()
    passes = {n: mean(v) for n, v in pass_times.items()}
    timed_steps = step_seconds[1:] or step_seconds
    step = mean(timed_steps)
    total_passes = sum(passes.values())
    fastest = min(timed_steps) / sum(min(v) for v in pass_times.values())
    estimate = report["mib"]
    # the export, as run_recipe's end does it (EMA weights in place, the float32 unwrapped student)
    export_dir = work / f"export_{name}"
    started = time.perf_counter()
    with PeakMemory() as exporting:
        student = recipe.students(run)[0].use_ema().unwrapped(s.accelerator)
        folder = student.export(export_dir)
    export_seconds = time.perf_counter() - started
    precision = merged_export_error(student.generator.net, student.lora_adapter, teacher, folder)
    return {
        "config": {"preset": str((DMD2_PRESET if name == "dmd2" else LCM_PRESET).relative_to(ROOT)),
                   "resolution": args.resolution, "latents": list(s.shape), "batch_size": cfg.train.batch_size,
                   "mixed_precision": s.accelerator.mixed_precision,
                   "gradient_checkpointing": cfg.model.gradient_checkpointing,
                   **({"generator_lora_rank": cfg.model.generator_lora_rank,
                       "fake_score_lora_rank": cfg.model.fake_score_lora_rank, "update_ratio": cfg.optim.update_ratio,
                       "gan": cfg.loss.gan, "gan_balance": cfg.loss.gan_balance,
                       "fake_samples": cfg.loss.fake_samples} if name == "dmd2" else
                      {"lora_rank": cfg.model.lora_rank, "lora_alpha": cfg.model.lora_alpha, "target": cfg.loss.target,
                       "states": cfg.loss.states, "w": cfg.loss.w_min, "metric": cfg.loss.metric})},
        "parameters": count(unique.values()) + count(p for m in (s.conditioner.encoder.text_encoder, s.space.vae)
                                                     for p in m.parameters()),
        "trainable": count(trained),
        "roles": report["roles"],
        "dtypes": dtypes,
        "footprint_mib": {k: (None if v is None else round(v, 1)) for k, v in estimate.items()},
        "footprint_activations": {k: v for k, v in report["activations"].items() if k != "updates"},
        "memory_mib": {"rss_after_imports": round(baseline, 1), "rss_after_setup": round(before, 1),
                       "peak_rss_steps": round(peak, 1), "peak_rss_each_step": [round(v, 1) for v in peaks],
                       "peak_method": memory.method,
                       "rss_after_each_step": [round(v, 1) for v in after], "peak_reset": memory.reset,
                       "after_steps_live_tensors": live, "rss_after_steps_gc": round(untrimmed, 1),
                       "rss_after_steps_malloc_trim": trimmed and round(trimmed, 1)},
        "memory_ratio": round(peak / estimate["total"], 3),
        "memory_ratio_above_runtime": round((peak - baseline) / estimate["total"], 3),
        "setup_seconds": round(setup_seconds, 1),
        "step_seconds_each": [round(v, 2) for v in step_seconds],
        "step_seconds": round(step, 2),
        "timed_steps": len(timed_steps),
        "pass_seconds": {k: round(v, 2) for k, v in passes.items()},
        "pass_seconds_each": {k: [round(x, 2) for x in v] for k, v in pass_times.items()},
        "usage": {"timed_steps": usage_summary(step_usage[1:] or step_usage),
                  "passes": usage_summary([u for name in passes for u in RECORDED[name]]),
                  "each_step": [usage_summary([u]) for u in step_usage],
                  "load_average_at_end": [round(v, 2) for v in os.getloadavg()]},
        "pass_repeats": args.pass_repeats,
        "sum_of_passes_seconds": round(total_passes, 2),
        "step_over_passes": round(step / total_passes, 3),
        "fastest_step_over_fastest_passes": round(fastest, 3),
        "median_step_over_median_passes": round(median(timed_steps) / sum(median(v) for v in pass_times.values()), 3),
        "each_step_over_passes": [round(v / total_passes, 3) for v in timed_steps],
        "profiled_step": profiled,
        "other_seconds": {k: round(v, 2) for k, v in other.items()},
        "step_over_passes_and_updates": round(step / (total_passes + sum(other.values())), 3),
        "logs": logs, "losses_finite": finite,
        "export": {"folder": str(folder), "seconds": round(export_seconds, 1), "lora": (folder / "lora").is_dir(),
                   "peak_rss_mib": round(exporting.peak, 1),
                   "merged_unet": precision},
    }


def _card_call(folder: Path) -> tuple[dict, list[str]]:
    """The keyword arguments of the model card's pipeline call (literal values only) and its setup lines."""
    import ast

    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.DOTALL).group(1)
    call = re.search(r"pipe\((.*?)\)\.images", code, re.DOTALL).group(1)
    node = ast.parse(f"f({call})", mode="eval").body
    kwargs = {}
    for kw in node.keywords:
        try:
            kwargs[kw.arg] = ast.literal_eval(kw.value)
        except ValueError:
            kwargs[kw.arg] = None  # generator, latents: made here
    lines = code.splitlines()
    start = next(i for i, line in enumerate(lines) if "from_pretrained(" in line)
    end = next(i for i, line in enumerate(lines) if line.startswith("generator ="))
    return kwargs, lines[start + 1:end]


def sample(pipe, kwargs: dict, resolution: int, prompt: str):
    """One image at `resolution` with the card's arguments (its first input, where it draws one, at this size)."""
    import torch

    call = {k: v for k, v in kwargs.items() if v is not None}
    generator = torch.Generator().manual_seed(0)
    if "latents" in kwargs:  # the student's first input sigma_0 z, as the card draws it
        sigma_0 = float((1 - pipe.scheduler.alphas_cumprod[call["timesteps"][0]]).sqrt())
        side = resolution // pipe.vae_scale_factor
        call["latents"] = sigma_0 * torch.randn(1, pipe.unet.config.in_channels, side, side, generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        image = pipe(prompt, height=resolution, width=resolution, generator=generator, output_type="np",
                     **call).images
    return image, time.perf_counter() - start, call


def part_load(args) -> dict:
    """Each export through stock diffusers, sampled at the training resolution; the image must be finite."""
    import diffusers
    import numpy as np
    from diffusers import DiffusionPipeline

    prompt = PROMPTS.read_text().splitlines()[0]

    def ok(image) -> bool:
        return bool(np.isfinite(image).all()) and image.shape == (1, args.resolution, args.resolution, 3)
    folder = Path(args.folder)
    kwargs, _ = _card_call(folder)
    out = {}
    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder)
    load = time.perf_counter() - start
    image, seconds, call = sample(pipe, kwargs, args.resolution, prompt)
    out["merged"] = {"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
                     "unet_dtype": str(pipe.unet.dtype), "load_seconds": round(load, 1),
                     "call": {k: v for k, v in call.items() if k != "latents"}, "sample_seconds": round(seconds, 1),
                     "image_shape": list(image.shape), "finite": bool(np.isfinite(image).all()),
                     "loaded_ok": ok(image)}
    del pipe
    lora = folder / "lora"
    if lora.is_dir() and args.base:
        lora_kwargs, lora_setup = _card_call(lora)
        start = time.perf_counter()
        base = DiffusionPipeline.from_pretrained(args.base)
        base.load_lora_weights(lora)
        scheduler_line = next(line for line in lora_setup if ".from_config(" in line)
        # the card's scheduler line, e.g. pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, **{...})
        schedulers = {n: getattr(diffusers, n) for n in dir(diffusers) if n.endswith("Scheduler")}
        # the card's own literal line: its scheduler class and options, evaluated with this pipeline as `pipe`
        base.scheduler = eval(scheduler_line.split("=", 1)[1].strip(), {"pipe": base, **schedulers})
        load = time.perf_counter() - start
        image, seconds, call = sample(base, lora_kwargs, args.resolution, prompt)
        out["lora_on_base"] = {"setup": lora_setup, "scheduler": type(base.scheduler).__name__,
                               "load_seconds": round(load, 1),
                               "call": {k: v for k, v in call.items() if k != "latents"},
                               "sample_seconds": round(seconds, 1), "image_shape": list(image.shape),
                               "finite": bool(np.isfinite(image).all()), "loaded_ok": ok(image)}
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def part_sdxl(args) -> dict:
    """The SDXL UNet built in bf16 (no float32 copy at any point), one forward at 32x32 latents, batch 1, under bf16
    autocast, timed after a warm-up forward."""
    import psutil
    import torch

    from stepdistill.model_configs import build

    need = 2 * 2_567_463_684 / 2**30 + 2  # bf16 weights + working memory, GiB
    available = psutil.virtual_memory().available / 2**30
    if available < need:
        return {"skipped": f"{available:.1f} GiB available, {need:.1f} GiB needed"}
    start = time.perf_counter()
    torch.manual_seed(0)
    unet = build("sdxl", "unet", device="cpu", dtype=torch.bfloat16)
    build_seconds = time.perf_counter() - start
    c = unet.config
    side = args.resolution // 8
    x = torch.randn(1, c.in_channels, side, side)
    size = args.resolution
    ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32)  # original size, crop, target size
    pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    kw = dict(encoder_hidden_states=torch.randn(1, 77, c.cross_attention_dim),
              added_cond_kwargs={"text_embeds": torch.randn(1, pooled), "time_ids": ids})
    seconds, outs = [], None
    with PeakMemory() as memory, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(1 + args.sdxl_repeats):
            begin = time.perf_counter()
            outs = unet(x, torch.tensor([500.0]), **kw).sample
            seconds.append(time.perf_counter() - begin)
    return {"parameters": count(unet.parameters()), "dtype": str(next(unet.parameters()).dtype),
            "build_seconds": round(build_seconds, 1), "latents": [c.in_channels, side, side], "batch": 1,
            "forward_seconds_each": [round(v, 2) for v in seconds],
            "forward_seconds": round(sum(seconds[1:]) / max(len(seconds) - 1, 1), 2),
            "output_finite": bool(torch.isfinite(outs).all()), "peak_rss_mib": round(memory.peak, 1)}


PARTS = {"build": part_build, "dmd2": lambda a: train_part(a, "dmd2"), "lcm": lambda a: train_part(a, "lcm"),
         "load": part_load, "sdxl": part_sdxl}


# ----------------------------------------------------------------------------
# The whole run.

def child(part: str, args, result: Path, *extra: str) -> dict:
    """Run `--only part` in a fresh process; its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--only", part, "--workdir", str(args.workdir),
               "--result", str(result), "--steps", str(args.steps), "--pass-repeats", str(args.pass_repeats),
               "--resolution", str(args.resolution), "--sdxl-repeats", str(args.sdxl_repeats), *extra]
    if args.teacher:
        command += ["--teacher", str(args.teacher)]
    print(f"== {part}: {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, check=False)
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}", "seconds": round(time.perf_counter() - start, 1)}
    data = json.loads(result.read_text())
    data["process_seconds"] = round(time.perf_counter() - start, 1)
    return data


def machine() -> dict:
    import diffusers
    import psutil
    import torch
    import transformers

    flags = set()
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE).group(1).split())
    except (OSError, AttributeError):
        pass
    model = re.search(r"^model name\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE) \
        if Path("/proc/cpuinfo").is_file() else None
    return {"cpu": model.group(1).strip() if model else platform.processor(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "bf16_hardware": sorted(flags & {"avx512_bf16", "amx_bf16"}),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__}


def notes(results: dict) -> list[str]:
    """What each goal's figure is made of, from the figures measured: the resident set at each point of the run
    against the footprint's parts, and the step's time against its passes."""
    out = []
    for name in ("dmd2", "lcm"):
        r = results.get(name) or {}
        if "memory_ratio" not in r:
            continue
        m, f = r["memory_mib"], r["footprint_mib"]
        runtime, peak, settled = m["rss_after_imports"], m["peak_rss_steps"], m["rss_after_each_step"][-1]
        live = m["after_steps_live_tensors"]
        trimmed = m["rss_after_steps_malloc_trim"]
        within = abs(r["memory_ratio"] - 1) <= 0.15
        held = settled - runtime
        counted = f["parameters"] + f["optimizer_states"] + f["ema"]
        out.append(
            f"{name} memory: peak RSS {peak:.0f} MiB vs the footprint's {f['total']:.0f} MiB "
            f"(x{r['memory_ratio']:.2f}; goal within 15%: {'met' if within else 'missed'}; "
            f"x{r['memory_ratio_above_runtime']:.2f} counting from the runtime's {runtime:.0f} MiB). Measured parts: "
            f"(1) the Python/torch/diffusers/transformers runtime, {runtime:.0f} MiB resident after the imports, "
            f"before any network, which the footprint does not count; (2) between steps the run holds {held:.0f} MiB "
            f"above it, of which live tensors are {live['weights_and_grads'] + live['optimizer_states']:.0f} MiB "
            f"(weights {live['weights_and_grads']:.0f} + AdamW states {live['optimizer_states']:.0f}; the footprint: "
            f"{counted:.0f}); the other {held - live['weights_and_grads'] - live['optimizer_states']:.0f} MiB are not "
            "tensors the run holds: code and objects loaded during setup (diffusers' and transformers' model modules "
            "imported on first use, the tokenizer, accelerate's state), oneDNN's caches, and heap memory freed but "
            "kept by glibc malloc"
            + (f" (malloc_trim(0) after the steps returns {m['rss_after_steps_gc'] - trimmed:.0f} MiB of it)"
               if trimmed else "")
            + f"; (3) within a step, a transient {peak - settled:.0f} MiB above that, for the footprint's "
            f"{f['gradients']:.0f} MiB of gradients + {f['activations']:.0f} MiB of activations (the rest: the no-grad "
            "passes' working sets, which the footprint leaves out by design, docs/memory.md 'Not counted': the guided "
            "teacher on 2x the batch, the VAE encoding 256x256 images, the recomputed checkpointed block in the "
            "backward, the optimiser's temporaries). A CUDA run's torch.cuda.max_memory_allocated has neither (1) nor "
            "glibc's retained blocks.")
        ratio = r["step_over_passes"]
        updates = sum(r["other_seconds"].values())
        u = r["usage"]
        spread = max(100 * (max(v) - min(v)) / min(v) for v in r["pass_seconds_each"].values())
        steps = r["step_seconds_each"][1:]
        uncertainty = ratio * ((max(steps) - min(steps)) / 2 / len(steps) ** 0.5 / r["step_seconds"]
                               + spread / 200 / len(r["pass_seconds_each"]) ** 0.5)
        cumulative = {e["where"]: e["seconds"] for e in r["profiled_step"]["cumulative_seconds"]}

        def spent(fragment: str, cumulative: dict = cumulative) -> float:
            return max([v for k, v in cumulative.items() if fragment in k] or [0.0])

        faults = u["timed_steps"]["minor_faults_per_second"] > u["passes"]["minor_faults_per_second"]
        profiled = (f"A profiled step ({r['profiled_step']['seconds']:.1f} s) spends "
                    f"{spent('setup.py:389(accumulate)'):.1f} s in its phases' passes (forward and backward), "
                    f"{spent('(update)'):.2f} s in the optimiser updates, and "
                    f"{spent('adapters.py:17(_tuner_layers)'):.2f} s of the passes in LoRA adapter switching "
                    "(stepdistill.adapters scanning the network's layers, at every checkpointed block's "
                    "recomputation too)"
                    + ("; the rest of the gap is the same passes running slower inside the step than alone"
                       + (" (more memory freed and touched again between them: the page faults below)" if faults
                          else "") if ratio > 1 else "") + ".")
        out.append(
            f"{name} speed: {r['step_seconds']:.1f} s a step (mean of {r['timed_steps']}) vs "
            f"{r['sum_of_passes_seconds']:.1f} s of network passes timed alone (x{ratio:.2f}; goal <= 1.10: "
            f"{'met' if ratio <= 1.10 else 'missed'}; fastest step over the fastest passes: "
            f"x{r['fastest_step_over_fastest_passes']:.2f}). Outside the passes a step runs its optimiser updates "
            f"({updates:.2f} s: gradient clipping and AdamW over {r['trainable'] / 1e6:.1f} M trained weights), reads "
            f"and resizes its real images, draws its noise and times, and the losses' small ops "
            f"(x{r['step_over_passes_and_updates']:.2f} against passes + updates). {profiled} On this machine the "
            f"same work varies from run to run: the timed steps took {min(r['step_seconds_each'][1:]):.1f}-"
            f"{max(r['step_seconds_each'][1:]):.1f} s (x{min(r['each_step_over_passes']):.2f}-"
            f"x{max(r['each_step_over_passes']):.2f} of the passes step by step; medians: "
            f"x{r['median_step_over_median_passes']:.2f}) and a pass's repeats differ by up to {spread:.0f}%, so the "
            f"ratio is known to about +-{uncertainty:.2f}. The process used {u['timed_steps']['cores_used']:.2f} cores "
            f"in the steps and {u['passes']['cores_used']:.2f} in the passes alone (other processes: "
            f"{u['timed_steps']['other_processes_cores']:.2f} and {u['passes']['other_processes_cores']:.2f} cores); "
            "system time "
            f"{100 * u['timed_steps']['system_share']:.0f}% vs {100 * u['passes']['system_share']:.0f}% of its CPU "
            f"time, minor page faults {u['timed_steps']['minor_faults_per_second']}/s vs "
            f"{u['passes']['minor_faults_per_second']}/s (a step frees and re-touches more memory than a pass alone).")
        merged = (r.get("export") or {}).get("merged_unet") or {}
        if merged.get("error_over_delta_median") is not None:
            error = merged["error_over_delta_median"]
            held = ", ".join(t.removeprefix("torch.") for t in merged["exported_dtype"])
            how = ("the teacher's float32 weights plus the trained adapter, as docs/training.md says" if error < 0.01
                   else "the trained change mostly lost to the 16-bit base's rounding")
            out.append(
                f"{name} export: loaded back in stock diffusers: {r.get('export_loaded_ok')}; its merged UNet is saved "
                f"in {held}; its LoRA-targeted weights' distance to the float32 merge over the trained delta: median "
                f"{error:.2g}, max {merged['error_over_delta_max']:.2g} ({merged['lora_layers']} layers): {how}. "
                f"The export's own peak RSS: {r['export']['peak_rss_mib']:.0f} MiB.")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the full-size folder, the runs and the exports go (default: a temporary folder, "
                             "removed at the end; ~12 GB on disk)")
    parser.add_argument("--only", choices=sorted(PARTS), help="run one part in this process (the script's own use)")
    parser.add_argument("--result", type=Path, help="with --only: where the part writes its JSON")
    parser.add_argument("--folder", type=Path, help="with --only load: the export to load")
    parser.add_argument("--base", type=Path, help="with --only load: the base pipeline a LoRA export loads onto")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="an existing pipeline folder instead of the full-size build (development; the JSON "
                             "says which)")
    parser.add_argument("--steps", type=int, default=2,
                        help="steps after the warm-up step under the memory watch, timed too (default 2)")
    parser.add_argument("--pass-repeats", type=int, default=5,
                        help="speed rounds: one more timed step, then each of its passes alone (default 5)")
    parser.add_argument("--sdxl-repeats", type=int, default=2, help="timed SDXL forwards after the warm-up (default 2)")
    parser.add_argument("--resolution", type=int, default=RESOLUTION)
    parser.add_argument("--skip", nargs="*", default=[], choices=sorted(PARTS), help="parts not to run")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.only:
        if args.workdir is None:
            parser.error("--only needs --workdir")
        result = PARTS[args.only](args)
        args.result.write_text(json.dumps(result, indent=2, default=str) + "\n")
        return
    temp = None
    if args.workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="full_size_cpu_")
        args.workdir = Path(temp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict = {"command": "python eval/full_size_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
                     "machine": machine(), "teacher": str(args.teacher) if args.teacher else
                     "assets/model_configs/sd15, random init (built offline)"}
    try:
        if not args.teacher:
            results["build"] = child("build", args, args.workdir / "build.json")
        for name in ("dmd2", "lcm"):
            if name in args.skip:
                continue
            results[name] = r = child(name, args, args.workdir / f"{name}.json")
            if "export" in r and "load" not in args.skip:
                base = args.teacher or args.workdir / "sd15"
                r["export_loaded"] = child("load", args, args.workdir / f"load_{name}.json", "--folder",
                                           r["export"]["folder"], "--base", str(base))
                parts = [v for k, v in r["export_loaded"].items() if isinstance(v, dict)]
                r["export_loaded_ok"] = bool(parts) and all(p.get("loaded_ok") for p in parts)
        if "sdxl" not in args.skip:
            results["sdxl_unet_forward"] = child("sdxl", args, args.workdir / "sdxl.json")
    finally:
        if temp is not None:
            temp.cleanup()
    results["goals"] = {"memory_estimate_within_15_percent": "footprint total within 15% of the measured peak RSS",
                        "step_over_passes_at_most_1.10": "seconds per step <= 1.10x the sum of its network passes"}
    results["notes"] = notes(results)
    results["minutes"] = round((time.perf_counter() - started) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps({k: results[k] for k in ("notes", "minutes")}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
