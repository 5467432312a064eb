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


def save_samples(student: AnyStudent, path: Path, *, write: bool = True) -> None:
    """A grid with one column per class (or prompt, up to 10), 8 rows, fixed noise, saved where `write` (the main
    process). Every process calls it: a sharded student (`sharding`) samples on all of them, for each of its passes
    gathers its weights from every process; any other samples on the writing process alone."""
    from torchvision.utils import save_image

    if not write and not any(is_sharded(s.generator) for s in student.members):
        return

    columns = max(1, min(student.conditioner.num_classes, 10))
    labels = torch.arange(columns).repeat(8).to(student.device)
    x = student.sample(labels, torch.Generator().manual_seed(0))
    if not write:
        return
    # decoded a few at a time: a VAE decoding 80 latents at 512-1024 px in one call needs tens of GiB
    x = torch.cat([student.space.decode(part) for part in x.split(DECODE_BATCH)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x * 0.5 + 0.5, path, nrow=columns, padding=1, pad_value=1.0)


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
