"""Generation for evaluation: any model, one random generator per image seed, split across processes.

Models (`load_model`):
- a shipped or local teacher (`"digits"`, a diffusers folder) sampled with a named ODE sampler
  (`stepdistill.samplers`) at a requested NFE;
- an exported student pipeline folder (`stepdistill.export`), sampled as its `student.json` says the student
  samples (`sampler_spec.SamplerSpec`): NFE K runs K of the student's own times (beyond them, a plain multistep
  class-conditional student runs DMD2's evenly spaced timesteps 999 - floor(i * 1000 / K)); a text-to-image
  pipeline gets the call of `export.calls.pipeline_arguments`, with each image's noise from its own generator;
- a training checkpoint folder `<output_dir>/checkpoints/step_*` of any distillation recipe: the student its
  recipe builds from the run's config (`stepdistill.evaluation.checkpoint`) with the checkpoint's
  `student.safetensors` (EMA weights where the run kept them), sampled as the student samples.
What each `--model` is, and the message for what cannot be measured here: `stepdistill.evaluation.inputs`.

Reproducibility (EDM2's `StackedRandomGenerator`): every draw is made per image from a
`torch.Generator` seeded with the image's seed, so an image does not depend on the batch size or on how
many processes share the work (`accelerate`'s `PartialState.split_between_processes`).
Images are written as PNG files `<seed>.png` or as one npz per process (`images` uint8 NHWC, `seeds`).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["StackedRandomGenerator", "load_model", "check_model", "generate_images", "read_images", "to_uint8",
           "TeacherModel", "PipelineModel", "CheckpointModel"]


class StackedRandomGenerator:
    """One CPU `torch.Generator` per image seed; `randn(shape)` draws (len(seeds), *shape) on the CPU, which the model
    moves to its device: an image's noise depends on its seed alone, not on the device that samples it."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g, dtype=dtype) for g in self.generators])


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] NCHW -> uint8 NHWC."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _lcm_timesteps(nfe: int, num_train_timesteps: int = 1000) -> list[int]:
    return [num_train_timesteps - 1 - (i * num_train_timesteps) // nfe for i in range(nfe)]


# ----------------------------------------------------------------------------
# Models: __call__(conditions, rng, nfe) -> images in [-1, 1], NCHW.

class TeacherModel:
    """A teacher with an ODE sampler; class labels go to the network as `class_labels`."""

    def __init__(self, source: str, sampler: str = "dpmpp_2m", spacing: str = "karras", device="cpu"):
        from ..roles import make_real_score
        from ..teachers import load_teacher

        self.device = torch.device(device)
        self.teacher = load_teacher(source, device=self.device)
        if "sr_scale" in self.teacher.index:
            raise ValueError(f"{source} is a super-resolution teacher: measure it with "
                             f"`python eval/evaluate.py sr --model {source}`")
        if self.teacher.extra:
            raise ValueError(f"teacher {source} is a text-to-image pipeline; evaluate an exported pipeline folder")
        self.denoiser = make_real_score(self.teacher)
        cfg = self.teacher.net.config
        self.shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        self.name, self.sampler, self.spacing = "teacher", sampler, spacing
        self.native_nfe = None
        self.info = dict(kind="teacher", source=str(source), sampler=sampler, spacing=spacing)

    @torch.no_grad()
    def __call__(self, conditions: Sequence, rng: StackedRandomGenerator, nfe: int) -> torch.Tensor:
        from ..samplers import sample, steps_for_nfe

        noise = self.teacher.schedule.prior_std() * rng.randn(self.shape).to(self.device)
        labels = None if conditions[0] is None else torch.as_tensor(list(conditions), dtype=torch.long,
                                                                     device=self.device)
        return sample(partial(self.denoiser, class_labels=labels), self.teacher.schedule, noise,
                      sampler=self.sampler, steps=steps_for_nfe(self.sampler, nfe), spacing=self.spacing)

    def nfe_of(self, nfe: int) -> int:
        from ..samplers import nfe_of, steps_for_nfe

        return nfe_of(self.sampler, steps_for_nfe(self.sampler, nfe))


class PipelineModel:
    """An exported pipeline folder, sampled as its student samples: from the folder's `student.json` (`sampler_spec`),
    at K of the student's own times for NFE K. Class-conditional (and routed) pipelines run with
    `trust_remote_code`; text-to-image ones get the call `export.calls.pipeline_arguments` builds, with each image's
    noise drawn here from that image's generator."""

    CALLS = {"class": "_labelled", "text": "_prompted"}  # the export's condition -> how its pipeline is called

    def __init__(self, folder: str | Path, name: str | None = None, device="cpu"):
        from diffusers import DiffusionPipeline

        from ..sampler_spec import read_student_json

        folder = Path(folder)
        self.spec, self.record = read_student_json(folder)
        self.pipe = DiffusionPipeline.from_pretrained(str(folder), trust_remote_code=True).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.call = getattr(self, self.CALLS[self.record["condition"]])
        self.shape = tuple(self.record["shape"])
        self.native_nfe = self.spec.nfe
        self.name = name or self.record["recipe"]
        gamma = self.spec.gamma
        self.sampler = "one_step" if self.native_nfe == 1 else "multistep" if gamma is None else f"tcd_gamma_{gamma:g}"
        self.info = dict(kind="pipeline", source=str(folder), pipeline=type(self.pipe).__name__,
                         scheduler=type(self.pipe.scheduler).__name__, timesteps=self.spec.exported_times(),
                         sampler_spec=self.spec.to_dict())

    def times(self, nfe: int) -> list:
        """K of the student's own times for NFE K; beyond them, DMD2's evenly spaced ones (plain multistep only)."""
        if nfe <= self.spec.max_steps:
            return self.spec.exported_times(nfe)
        if self.spec.gamma is not None or self.spec.flow or self.call == self._prompted:
            raise ValueError(f"NFE {nfe}: this student samples in 1..{self.spec.max_steps} of its own times")
        return _lcm_timesteps(nfe, self.spec.num_train_timesteps)

    @torch.no_grad()
    def __call__(self, conditions: Sequence, rng: StackedRandomGenerator, nfe: int) -> torch.Tensor:
        return self.call(list(conditions), rng, nfe).float() * 2 - 1

    def _labelled(self, conditions: list, rng: StackedRandomGenerator, nfe: int) -> torch.Tensor:
        """A class-conditional (or routed) travelling pipeline at `nfe` of the student's times."""
        own = list(self.pipe.config.timesteps)
        self.pipe.register_to_config(timesteps=self.times(nfe))
        labels = None if conditions[0] is None else list(conditions)
        owner = self.pipe.config.get("owner") if labels is not None else None
        # a routed pipeline hands each student the first generators of the list: one call per student, with
        # its images' own generators, keeps every image on its seed
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(conditions):
            groups.setdefault(0 if owner is None else owner[max(int(c), 0)], []).append(i)
        out = None
        try:
            for idx in groups.values():
                images = self.pipe(class_labels=None if labels is None else [labels[i] for i in idx],
                                   num_images=len(idx), generator=[rng.generators[i] for i in idx],
                                   output_type="pt").images
                out = images.new_zeros((len(conditions), *images.shape[1:])) if out is None else out
                out[idx] = images
        finally:
            self.pipe.register_to_config(timesteps=own)
        return out

    def _prompted(self, prompts: list[str], rng: StackedRandomGenerator, nfe: int) -> torch.Tensor:
        from ..export.calls import pipeline_arguments

        self.times(nfe)  # an NFE it cannot sample fails before any work
        noise = rng.randn(self.shape).to(self.pipe.device)
        # one image a call where the pipeline routes prompts among students, or where a flow pipeline's re-noising
        # draws from torch's global generator (seeded with the image's seed): the same images at any batch size
        alone = hasattr(self.pipe, "num_students") or (self.spec.flow and nfe > 1)
        if not alone:
            arguments = pipeline_arguments(self.pipe, self.spec, self.record, steps=nfe, noise=noise)
            return self.pipe(prompts, generator=rng.generators, output_type="pt", **arguments).images.float()
        out = []
        for i, (prompt, g) in enumerate(zip(prompts, rng.generators)):
            torch.manual_seed(g.initial_seed())
            out.append(self.pipe([prompt], generator=[g], output_type="pt", **pipeline_arguments(
                self.pipe, self.spec, self.record, steps=nfe, noise=noise[i:i + 1])).images.float())
        return torch.cat(out)

    def nfe_of(self, nfe: int) -> int:
        return nfe


class CheckpointModel:
    """A recipe's training checkpoint: the student its recipe builds from the run's config, with the checkpoint's
    weights (`student.safetensors`, EMA applied, as the run evaluates and exports them; a checkpoint without it
    falls back to the trained weights in `model.safetensors`): `stepdistill.evaluation.checkpoint`. It samples
    as the student does, at K of its own times for NFE K (`SamplerSpec.times`; beyond them, DMD2's evenly
    spaced timesteps), each image from its own generator."""

    def __init__(self, checkpoint: str | Path, name: str | None = None):
        from .checkpoint import build_student, read_checkpoint, refuse_unsupported

        checkpoint = Path(checkpoint)
        run = read_checkpoint(checkpoint)
        refuse_unsupported(run)
        self.student = build_student(run)
        first = self.student.members[0]
        if first.conditioner.kind not in ("class", "unconditional"):  # `gen` samples labels, not prompts or images
            raise ValueError(f"{checkpoint}: a {run.recipe} student conditioned by {type(first.conditioner).__name__} "
                             f"is measured through its exported pipeline ({run.export})")
        self.generator = first.generator
        self.teacher = first.teacher
        self.ts = self.student.sampler.times()
        self.shape = tuple(first.shape)
        self.native_nfe = self.student.nfe
        self.name = name or run.run_dir.name
        self.sampler = "one_step" if self.native_nfe == 1 else "multistep"
        self.info = dict(kind="checkpoint", source=str(checkpoint), recipe=run.recipe, step=run.step,
                         teacher=str(run.cfg.model.teacher), timesteps=[float(t) for t in self.ts], ema=run.ema)
        # a plain student's chain runs batched from per-image noise; TCD's sampler and routed students draw from
        # one generator, so they sample each image on its own (the same images at any batch size)
        self.batched = self.student.members[0] is self.student and self.student.sampler.gamma is None

    def timesteps_for(self, nfe: int):
        """The student's own K times for NFE K (`SamplerSpec.times`), else DMD2's evenly spaced ones."""
        spec = self.student.sampler
        if 1 <= nfe <= spec.max_steps:
            return spec.times(nfe)
        if not self.batched:
            raise ValueError(f"NFE {nfe}: this {self.info['recipe']} student samples in 1..{spec.max_steps} "
                             "of its own times")
        return torch.tensor(_lcm_timesteps(nfe), dtype=torch.float64)

    @torch.no_grad()
    def __call__(self, conditions: Sequence, rng: StackedRandomGenerator, nfe: int) -> torch.Tensor:
        from ..samplers import multistep

        st = self.student
        labels = torch.zeros(len(conditions), dtype=torch.long) if conditions[0] is None else \
            torch.as_tensor(list(conditions), dtype=torch.long)
        ts = self.timesteps_for(nfe)
        if not self.batched:
            steps = None if nfe == self.native_nfe else nfe
            return torch.cat([st.images(labels[i:i + 1], torch.Generator().manual_seed(g.initial_seed()), steps)
                              for i, g in enumerate(rng.generators)])
        device = st.device
        cond = st.conditioner.cond(labels.to(device))
        x = rng.randn(self.shape).to(device) * st.sampler.input_scale
        out = multistep(partial(st.generator.denoiser, **cond), st.schedule, x, ts,
                        renoise=lambda shape: rng.randn(shape[1:]).to(device))
        return st.space.decode(out)

    def nfe_of(self, nfe: int) -> int:
        return nfe


def check_model(spec: str):
    """What `load_model(spec)` would load (`inputs.identify`), or a one-line refusal, without loading any network:
    a kind `gen` cannot sample (a super-resolution pipeline, a text-to-image or SR training checkpoint) and a
    truncated or corrupt file among those it would read are refused here."""
    from .checkpoint import read_checkpoint, refuse_unsupported
    from .inputs import check_folder_files, identify

    found = identify(spec)
    if found.kind == "checkpoint":
        refuse_unsupported(read_checkpoint(found.path))
    elif found.kind == "sr_pipeline":
        raise ValueError(f"{found.path} is a super-resolution pipeline: measure it with "
                         f"`python eval/evaluate.py sr --model {found.path}`")
    elif found.path is not None:
        check_folder_files(found.path)
    return found


def load_model(spec: str, *, sampler: str = "dpmpp_2m", name: str | None = None, device="cpu"):
    """`digits` or a teacher folder -> TeacherModel; an exported pipeline folder -> PipelineModel; a training
    checkpoint folder of any recipe -> CheckpointModel; anything else is refused with one line (`check_model`).
    `device`: where it samples (a checkpoint's student goes where its recipe's setup puts it: the GPU, if any)."""
    found = check_model(spec)
    if found.kind == "checkpoint":
        return CheckpointModel(found.path, name)
    if found.kind == "pipeline":
        return PipelineModel(found.path, name, device=device)
    return TeacherModel(spec, sampler, device=device)


# ----------------------------------------------------------------------------
# Generation and storage.

def _state():
    from accelerate import PartialState

    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return PartialState(cpu=cpu) if cpu else PartialState()


def generate_images(model, conditions: Sequence, seeds: Sequence[int], nfe: int, out_dir: str | Path, *,
                    batch_size: int = 250, image_format: str = "npz", progress: bool = True) -> dict:
    """Generate one image per (seed, condition) into `out_dir`, this process's share of them; returns this
    process's timing. Call on every process; all processes return after the folder is complete."""
    from tqdm.auto import tqdm

    state = _state()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if state.is_main_process:  # an earlier run's images are never scored with these
        for stale in [*out_dir.glob("images_rank*.npz"), *out_dir.glob("*.png"), out_dir / "meta.json"]:
            stale.unlink(missing_ok=True)
    state.wait_for_everyone()
    items = list(zip([int(s) for s in seeds], conditions))
    with state.split_between_processes(items) as local:
        local = list(local)
    images, done, elapsed = [], [], 0.0
    batches = [local[i:i + batch_size] for i in range(0, len(local), batch_size)]
    bar = tqdm(batches, desc=f"{out_dir.name} nfe {nfe}", disable=not (progress and state.is_main_process),
               leave=False)
    for batch in bar:
        bseeds = [s for s, _ in batch]
        start = time.perf_counter()
        x = model([c for _, c in batch], StackedRandomGenerator(bseeds), nfe)
        elapsed += time.perf_counter() - start
        u8 = to_uint8(x)
        if image_format == "png":
            _write_png(u8, bseeds, out_dir)
        else:
            images.append(u8)
        done += bseeds
    if image_format == "npz":
        arr = np.concatenate(images) if images else np.zeros((0, 1, 1, 1), np.uint8)
        np.savez(out_dir / f"images_rank{state.process_index:03d}.npz", images=arr, seeds=np.array(done))
    state.wait_for_everyone()
    return dict(seconds_per_image=elapsed / max(1, len(done)), images=len(done), processes=state.num_processes)


def _write_png(u8: np.ndarray, seeds: Sequence[int], out_dir: Path) -> None:
    from PIL import Image

    for im, s in zip(u8, seeds):
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(out_dir / f"{s:08d}.png")


def read_images(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, seeds) of a generated folder, sorted by seed."""
    from PIL import Image

    out_dir = Path(out_dir)
    shards = sorted(out_dir.glob("images_rank*.npz"))
    if shards:
        data = [np.load(p) for p in shards]
        images = np.concatenate([d["images"] for d in data if len(d["seeds"])])
        seeds = np.concatenate([d["seeds"] for d in data])
    else:
        files = sorted(out_dir.glob("*.png"))
        if not files:
            raise FileNotFoundError(f"no generated images in {out_dir}")
        seeds = np.array([int(f.stem) for f in files])
        images = np.stack([np.asarray(Image.open(f)) for f in files])
        images = images[..., None] if images.ndim == 3 else images
    order = np.argsort(seeds)
    return images[order], seeds[order]


def describe(model) -> dict[str, Any]:
    return {**model.info, "model": model.name, "sampler": model.sampler}


def nfe_grid(model, requested: Sequence[int] | None) -> list[int]:
    if requested:
        return [int(n) for n in requested]
    if model.native_nfe is None:
        raise ValueError("give the NFE grid (--nfe 1 2 4 ...) for a model without a native step count")
    return [model.native_nfe]
