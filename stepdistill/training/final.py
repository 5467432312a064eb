"""The end of a run: final sample grids, the benchmark that applies (`benchmarks.BENCHMARKS`), export and upload."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..export import push_to_hub, teacher_license
from ..export.card import fused_losses_line
from ..io import atomic_write_text
from ..local_paths import public_command
from ..ops import fused_losses_record
from ..sharding import is_sharded
from ..student import AnyStudent
from .benchmarks import BENCHMARKS, RunFacts
from .horizon import Horizon
from .loop import DivergenceError, nonfinite
from .sections import EvalConfig, ExportConfig


DECODE_BATCH = 8  # latents the sample grid decodes at once


def save_samples(student: AnyStudent, path: Path, *, write: bool = True,
                 columns: torch.Tensor | None = None) -> torch.Tensor | None:
    """A grid with one column per label of `columns` (default: the first 10 classes or prompts), 8 rows, fixed noise,
    saved where `write` (the main process), and returned there as a (3, H, W) tensor in [0, 1] for the trackers.
    Every process calls it: a sharded student (`sharding`) samples on all of them, for each of its passes gathers its
    weights from every process; any other samples on the writing process alone."""
    from torchvision.utils import make_grid, save_image

    if not write and not any(is_sharded(s.generator) for s in student.members):
        return None
    if columns is None:
        columns = torch.arange(max(1, min(student.conditioner.num_classes, 10)))
    labels = columns.repeat(8).to(student.device)
    x = student.sample(labels, torch.Generator().manual_seed(0))
    if not write:
        return None
    # decoded a few at a time: a VAE decoding 80 latents at 512-1024 px in one call needs tens of GiB
    x = torch.cat([student.space.decode(part) for part in x.split(DECODE_BATCH)])
    grid = make_grid((x * 0.5 + 0.5).clamp(0, 1).float().cpu(), nrow=len(columns), padding=1, pad_value=1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid


def validation_columns(train, conditioner) -> torch.Tensor | None:
    """`train.validation_prompts` (text-to-image teachers) or `train.validation_labels` (class-conditional) as the
    sample grid's column labels; None: the default columns. Checked before training."""
    prompts, labels = list(train.validation_prompts), list(train.validation_labels)
    if prompts and labels:
        raise ValueError("set train.validation_prompts (text-to-image) or train.validation_labels (classes), not both")
    if prompts:
        if not hasattr(conditioner, "labels_for"):
            raise ValueError("train.validation_prompts applies to text-to-image teachers; a class-conditional one "
                             "takes train.validation_labels")
        return conditioner.labels_for(prompts)
    if labels:
        classes = getattr(conditioner, "num_classes", 0) if getattr(conditioner, "kind", None) == "class" else 0
        bad = [k for k in labels if not 0 <= k < classes]
        if not classes or bad:
            raise ValueError(f"train.validation_labels={labels}: " + (
                f"{bad[0]} is not a class of this teacher (0..{classes - 1})" if classes else
                "this teacher is not class-conditional"))
        return torch.tensor(labels)
    return None


def _card_text(steps_done: int, horizon: Horizon, train_minutes: float, fused_losses: dict | None = None) -> str:
    """How long the student trained (and whether its time limit cut it short), with the command, and what computed
    its fused-kernel losses (`fused_losses`: `stepdistill.ops.fused_losses_record()`): what a reader of the model
    card needs beside the benchmark's own text (`Benchmark.card`)."""
    if steps_done < horizon.total:
        how = f"{steps_done} of {horizon.total} steps (stopped by its time limit before its decay ended)"
    elif horizon.total < horizon.max_steps:
        how = (f"{steps_done} steps (train.max_steps={horizon.max_steps}, fitted to its time limit at "
               f"{horizon.seconds_per_step:.2f} s a step)")
    else:
        how = f"{steps_done} of {horizon.max_steps} steps"
    losses = fused_losses_line(fused_losses)
    return f"## Training\n\n{how} in {train_minutes:.1f} minutes: `{public_command()}`\n" + (
        f"\n{losses}" if losses else "")


def finish(students: list[AnyStudent], accelerator, *, output_dir: str | Path, evaluation: EvalConfig,
           export: ExportConfig, real_denoiser, schedule, steps_done: int, horizon: Horizon, train_minutes: float,
           config: dict) -> dict | None:
    """After training, with EMA weights in place: for each student, on the main process, a final sample
    grid, the benchmark that applies (`benchmarks.BENCHMARKS`), the export (`OUTPUT/pipeline`, or `OUTPUT/pipeline/<name>`
    for several students) and the upload; the results then record the minutes all this took. Returns the
    first benchmark result, if any."""
    started, first = time.time(), None
    # Measure and export the weights as a user runs them: float32, no DDP or autocast wrapper.
    students = [s.unwrapped(accelerator) for s in students]
    if accelerator.is_main_process:
        out = Path(output_dir)
        teacher = str(config.get("model", {}).get("teacher", ""))
        facts = RunFacts(real_denoiser, schedule, evaluation, steps_done, horizon, train_minutes, config)
        for student in students:
            broken = nonfinite(student.state_dict())
            if broken:  # never measured, never exported
                raise DivergenceError(f"the {student.name} student has non-finite weights ({broken[0]}, ...): "
                                      "not evaluated, not exported")
            tag = "" if len(students) == 1 else f"_{student.name}"
            save_samples(student, out / "samples" / f"final{tag}.png")
            metrics, text = {}, _card_text(steps_done, horizon, train_minutes, fused_losses_record())
            bench = next((b for b in BENCHMARKS if b.applies(student)), None) if evaluation.enabled else None
            if bench is not None:
                result = bench.evaluate(student, facts)
                metrics, how = bench.card(result)
                text += how
                first = first or result
            if export.enabled:
                folder = out / "pipeline" if len(students) == 1 else out / "pipeline" / student.name
                card = {"metrics": metrics, "license": export.license or teacher_license(teacher), "extra": text}
                folder = student.export(folder, model_card=card)
                print(f"exported the student pipeline to {folder}")
                if export.hub_repo:
                    print(f"uploaded to {push_to_hub(folder, export.hub_repo, private=export.private)}")
        if first is not None:
            first["after_training_minutes"] = round((time.time() - started) / 60, 2)
            atomic_write_text(evaluation.results, json.dumps(first, indent=2) + "\n")
            print(f"{first['after_training_minutes']:.1f} minutes after training (evaluation and export)")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return first
