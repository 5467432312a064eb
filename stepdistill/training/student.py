"""A trained generator as a student: sampling, the digits benchmark, export, the end of a run."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ..benchmark import DigitsBenchmark, SampleFn, default_row, markdown_table, teacher_sample_fn
from ..conditioning import ClassConditioner
from ..config import to_dict
from ..export import export_class_conditional, export_text_to_image, push_to_hub
from ..io import atomic_write_text
from ..samplers import multistep, steps_for_nfe


@dataclass
class Student:
    """The generator (unwrapped) with what sampling it needs: one step for one time in `ts`, else
    multistep sampling with re-noising between the generator's times."""

    generator: torch.nn.Module
    conditioner: object
    schedule: object
    ts: torch.Tensor
    shape: tuple[int, ...]
    space: object

    def sample_fn(self) -> SampleFn:
        gen = self.generator

        @torch.no_grad()
        def fn(labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
            z = torch.randn(len(labels), *self.shape, generator=g).to(labels.device)
            den = partial(gen.denoiser, **self.conditioner.cond(labels))
            return multistep(den, self.schedule, z * gen.input_scale, self.ts, generator=g)

        return fn

    def benchmarkable(self) -> bool:
        """The digits benchmark measures class-conditional 16x16 one-channel students; text-to-image
        students are measured by eval/ (FID / CLIP) on their exported pipeline."""
        return isinstance(self.conditioner, ClassConditioner) and tuple(self.shape) == (1, 16, 16)


def save_samples(student: Student, path: Path, device) -> None:
    """A grid with one column per class (or prompt, up to 10), 8 rows, fixed noise."""
    from torchvision.utils import save_image

    columns = min(student.conditioner.num_classes, 10)
    labels = torch.arange(columns).repeat(8).to(device)
    x = student.sample_fn()(labels, torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(student.space.decode(x) * 0.5 + 0.5, path, nrow=columns, padding=1, pad_value=1.0)


def evaluate_on_digits(recipe: str, student: Student, real_denoiser, cfg, *, steps_done: int,
                       train_minutes: float) -> dict:
    """The student's rows (and the teacher's, measured in the same run) on the digits benchmark,
    written to `cfg.eval.results` and printed as a table; same row schema as the teacher baseline."""
    bench = DigitsBenchmark()
    floor = bench.floor()
    seeds = list(cfg.eval.seeds)
    student.generator.eval()
    rows = [dict(model=recipe, sampler="one_step" if len(student.ts) == 1 else "multistep", nfe=len(student.ts),
                 **bench.evaluate(student.sample_fn(), seeds))]
    if cfg.eval.teacher_rows:
        for nfe, default in ((1, False), (cfg.eval.teacher_nfe, True)):
            sampler = "ddim" if nfe == 1 else cfg.eval.teacher_sampler
            fn = teacher_sample_fn(real_denoiser, student.schedule, sampler=sampler,
                                   steps=steps_for_nfe(sampler, nfe), shape=student.shape)
            rows.append(dict(model="teacher", sampler=sampler, nfe=nfe, **bench.evaluate(fn, seeds),
                             **({"default": True} if default else {})))
    teacher_default = default_row(rows)
    first = rows[0]
    result = dict(
        benchmark="digits", recipe=recipe, command="accelerate launch " + " ".join(sys.argv),
        n_samples=bench.n_samples, seeds=seeds, floor_fd=floor["fd"], floor_accuracy=floor["accuracy"],
        floor_precision=floor["precision"], floor_recall=floor["recall"],
        train_steps=steps_done, max_steps=cfg.train.max_steps, stopped_by_time_limit=steps_done < cfg.train.max_steps,
        train_minutes=round(train_minutes, 2), torch_threads=torch.get_num_threads(),
        config=to_dict(cfg), rows=rows,
    )
    if teacher_default:
        result["student_vs_teacher"] = dict(
            fd_ratio=first["fd"] / teacher_default["fd"],
            accuracy_difference=first["accuracy"] - teacher_default["accuracy"],
            speedup=teacher_default["seconds_per_image"] / first["seconds_per_image"])
    atomic_write_text(cfg.eval.results, json.dumps(result, indent=2) + "\n")
    print("\n" + markdown_table(rows))
    if teacher_default:
        s = result["student_vs_teacher"]
        print(f"student / teacher FD {s['fd_ratio']:.2f}x, accuracy {s['accuracy_difference']:+.3f}, "
              f"speed-up {s['speedup']:.0f}x; floor FD {floor['fd']:.3f}; wrote {cfg.eval.results}")
    return result


def export_student(recipe: str, student: Student, teacher, cfg, folder: Path, result: dict | None) -> Path:
    """The student as a diffusers pipeline folder with a model card (see stepdistill.export): the
    standard text-to-image pipeline for SD-family teachers, a self-contained one-step pipeline for
    class-conditional pixel teachers."""
    metrics = {}
    if result is not None:
        row = result["rows"][0]
        metrics = {k: row[k] for k in ("fd", "fd_std", "accuracy", "seconds_per_image", "nfe")}
    card = dict(base_model=str(cfg.model.teacher), recipe=recipe, metrics=metrics)
    timesteps = [int(round(float(t))) for t in student.ts]
    net = student.generator.net
    if cfg.data.prompts is not None:
        path = export_text_to_image(folder, teacher.root, net, timesteps=timesteps, model_card=card)
    else:
        path = export_class_conditional(folder, net, teacher.scheduler_config, timesteps=timesteps,
                                        null_label=teacher.net.config.num_class_embeds - 1, model_card=card)
    print(f"exported the student pipeline to {path}")
    return path


def finish(recipe: str, cfg, accelerator, student: Student, teacher, real_denoiser, *, steps_done: int,
           train_minutes: float) -> dict | None:
    """After training (EMA weights already copied in): final samples, the digits benchmark when it
    applies, export and upload, all on the main process. Returns the benchmark result, if any."""
    result = None
    # Measure and export the weights as a user runs them, in float32: drop the autocast that
    # accelerate wraps around a prepared module's forward under mixed precision (training is over).
    student = replace(student, generator=accelerator.unwrap_model(student.generator, keep_fp32_wrapper=False))
    if accelerator.is_main_process:
        out = Path(cfg.train.output_dir)
        save_samples(student, out / "samples" / "final.png", accelerator.device)
        if cfg.eval.enabled and student.benchmarkable():
            result = evaluate_on_digits(recipe, student, real_denoiser, cfg, steps_done=steps_done,
                                        train_minutes=train_minutes)
        if cfg.export.enabled:
            folder = export_student(recipe, student, teacher, cfg, out / "pipeline", result)
            if cfg.export.hub_repo:
                print(f"uploaded to {push_to_hub(folder, cfg.export.hub_repo, private=cfg.export.private)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


class Roles:
    """Mixin for a recipe's run dataclass holding `accelerator`, the prepared `generator` and
    `fake_score`, and what sampling needs: the unwrapped modules and the run's `Student`."""

    @property
    def gen_module(self):
        return self.accelerator.unwrap_model(self.generator)

    @property
    def fake_module(self):
        return self.accelerator.unwrap_model(self.fake_score)

    def student(self) -> Student:
        return Student(self.gen_module, self.conditioner, self.schedule, self.ts, self.shape, self.space)
