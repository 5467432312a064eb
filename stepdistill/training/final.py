"""The end of a run: final sample grids, the digits benchmark where it applies, export and upload."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..digits_benchmark import (TEACHER_TABLE, DigitsBenchmark, default_row, is_shipped_teacher, markdown_table,
                                spread_cell, table_rows, teacher_sample_fn)
from ..export import push_to_hub, teacher_license
from ..io import atomic_write_text
from ..local_paths import public_command
from ..samplers import steps_for_nfe
from ..sr_benchmark import evaluate_sr_student, format_row, is_sr_student
from ..student import AnyStudent
from .horizon import Horizon
from .loop import DivergenceError, nonfinite
from .sections import EvalConfig, ExportConfig


def save_samples(student: AnyStudent, path: Path) -> None:
    """A grid with one column per class (or prompt, up to 10), 8 rows, fixed noise."""
    from torchvision.utils import save_image

    columns = max(1, min(student.conditioner.num_classes, 10))
    labels = torch.arange(columns).repeat(8).to(student.device)
    x = student.images(labels, torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(x * 0.5 + 0.5, path, nrow=columns, padding=1, pad_value=1.0)


def teacher_rows(evaluation: EvalConfig, bench: DigitsBenchmark, real_denoiser, schedule, shape, *,
                 teacher: str) -> tuple[list[dict], str]:
    """The teacher's rows beside the student's (1 NFE, and the default sampler at `teacher_nfe`), and where
    they come from. "table": the shipped teacher's committed rows (the same protocol and seeds, so the same
    figures to float precision; their speed is timed here, on a small batch, so the speed-up compares one
    machine's timings) where they apply, else measured; "measure": measured in this run (the full sets:
    ~3,000 images at 35 NFE); "none": no teacher rows."""
    if evaluation.teacher_rows == "none":
        return [], "none"
    wanted = [("ddim", 1), (evaluation.teacher_sampler, evaluation.teacher_nfe)]
    fns = [teacher_sample_fn(real_denoiser, schedule, sampler=sampler, steps=steps_for_nfe(sampler, nfe),
                             shape=shape) for sampler, nfe in wanted]
    seeds = list(evaluation.seeds)
    rows = (table_rows(wanted, seeds=seeds, n_samples=bench.n_samples)
            if evaluation.teacher_rows == "table" and is_shipped_teacher(teacher) else None)
    if rows is not None:
        for row, fn in zip(rows, fns):
            row.update(seconds_per_image=bench.seconds_per_image(fn), timed_images=10 * 10)
        source = f"table: {TEACHER_TABLE.relative_to(TEACHER_TABLE.parents[2])} (speed timed in this run)"
    else:
        rows = [bench.evaluate(fn, seeds) for fn in fns]
        source = "measured in this run"
    for row, (sampler, nfe) in zip(rows, wanted):
        row.pop("default", None)
        row.update(model="teacher", sampler=sampler, nfe=nfe, **({"default": True} if row is rows[-1] else {}))
    return rows, source


def evaluate_on_patches(student: AnyStudent, real_denoiser, schedule, evaluation: EvalConfig, *, steps_done: int,
                        horizon: Horizon, train_minutes: float, config: dict) -> dict:
    """A super-resolution student's rows on the held-out natural-image patches (`stepdistill.sr_benchmark`),
    with bicubic and the teacher's rows measured in the same run, written to `evaluation.results`, with a crop
    grid beside it (.png)."""
    result = evaluate_sr_student(student, real_denoiser, schedule, teacher_sampler=evaluation.teacher_sampler,
                                 teacher_nfe=evaluation.teacher_nfe, teacher_rows=evaluation.teacher_rows != "none",
                                 grid=Path(evaluation.results).with_suffix(".png"))
    result = dict(result, recipe=student.name, command=public_command(),
                  train_steps=steps_done, max_steps=horizon.max_steps, horizon=horizon.state(),
                  decay_complete=steps_done >= horizon.total, stopped_by_time_limit=steps_done < horizon.total,
                  train_minutes=round(train_minutes, 2), torch_threads=torch.get_num_threads(), config=config)
    rows = result["rows"]
    teacher = next((r for r in rows if r.get("default")), None)
    if teacher is not None:
        mine = rows[-1]
        result["student_vs_teacher"] = dict(psnr_difference=mine["psnr_y"] - teacher["psnr_y"],
                                            hf_error_ratio=mine["hf_spectrum_error"] / teacher["hf_spectrum_error"],
                                            speedup=teacher["seconds_per_image"] / mine["seconds_per_image"])
    atomic_write_text(evaluation.results, json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(format_row(r, width=10))
    print(f"wrote {evaluation.results}")
    return result


def evaluate_on_digits(student: AnyStudent, real_denoiser, schedule, evaluation: EvalConfig, *, steps_done: int,
                       horizon: Horizon, train_minutes: float, config: dict) -> dict:
    """The student's rows and the teacher's (see `teacher_rows`) on the digits benchmark, written to
    `evaluation.results` and printed as a table; same row schema as the teacher baseline. `config`: the
    run's configuration as a dict, recorded with the result."""
    bench = DigitsBenchmark()
    floor = bench.floor()
    seeds = list(evaluation.seeds)
    steps = [None] + [k for k in evaluation.student_steps if k != student.nfe]
    gamma = getattr(student, "gamma", None)  # a consistency student sampled by TCD's gamma (MLCM: 0)
    multistep = "multistep" if gamma is None else f"tcd_gamma_{gamma:g}"
    rows = [dict(model=student.name, sampler="one_step" if (k or student.nfe) == 1 else multistep,
                 nfe=k or student.nfe, **bench.evaluate(student.sample_fn(k), seeds)) for k in steps]
    teacher, source = teacher_rows(evaluation, bench, real_denoiser, schedule, student.shape,
                                   teacher=str(config.get("model", {}).get("teacher", "")))
    rows += teacher
    teacher_default = default_row(rows)
    first = rows[0]
    result = dict(
        benchmark="digits", recipe=student.name, command=public_command(),
        n_samples=bench.n_samples, seeds=seeds, floor_fd=floor["fd"], floor_fd2=floor["fd2"],
        floor_accuracy=floor["accuracy"],
        floor_precision=floor["precision"], floor_recall=floor["recall"], teacher_rows=source,
        train_steps=steps_done, max_steps=horizon.max_steps, horizon=horizon.state(),
        decay_complete=steps_done >= horizon.total, stopped_by_time_limit=steps_done < horizon.total,
        train_minutes=round(train_minutes, 2), torch_threads=torch.get_num_threads(),
        config=config, rows=rows,
    )
    if teacher_default:
        # Speeds compared at one batch size: a teacher timed on a small batch against the student timed on
        # the same batch (per-image cost falls with the batch).
        student_seconds = (bench.seconds_per_image(student.sample_fn()) if "timed_images" in teacher_default
                           else first["seconds_per_image"])
        result["student_vs_teacher"] = dict(
            fd_ratio=first["fd"] / teacher_default["fd"],
            **({"fd2_ratio": first["fd2"] / teacher_default["fd2"]} if "fd2" in teacher_default else {}),
            accuracy_difference=first["accuracy"] - teacher_default["accuracy"],
            speedup=teacher_default["seconds_per_image"] / student_seconds,
            speed_timed_on=f"{teacher_default.get('timed_images', bench.n_samples)} images a batch")
    atomic_write_text(evaluation.results, json.dumps(result, indent=2) + "\n")
    print("\n" + markdown_table(rows))
    if teacher_default:
        s = result["student_vs_teacher"]
        fd2 = f", FD2 {s['fd2_ratio']:.2f}x" if "fd2_ratio" in s else ""
        print(f"student / teacher FD {s['fd_ratio']:.2f}x{fd2}, accuracy {s['accuracy_difference']:+.3f}, "
              f"speed-up {s['speedup']:.0f}x; floor FD {floor['fd']:.3f}; teacher rows: {source}; "
              f"wrote {evaluation.results}")
    return result


def _card_text(result: dict | None, *, steps_done: int, horizon: Horizon, train_minutes: float) -> str:
    """What a reader of the model card needs to trust its numbers: the protocol, the teacher's rows (measured
    in the same run, or read from the committed table of the same protocol), and how long the student
    trained (and whether its time limit cut it short)."""
    if steps_done < horizon.total:
        how = f"{steps_done} of {horizon.total} steps (stopped by its time limit before its decay ended)"
    elif horizon.total < horizon.max_steps:
        how = (f"{steps_done} steps (train.max_steps={horizon.max_steps}, fitted to its time limit at "
               f"{horizon.seconds_per_step:.2f} s a step)")
    else:
        how = f"{steps_done} of {horizon.max_steps} steps"
    text = f"## Training\n\n{how} in {train_minutes:.1f} minutes: `{public_command()}`\n"
    if result is None:
        return text
    if result.get("benchmark") == "sr_patches":
        return text + _sr_card_text(result)
    rows = "\n".join(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {r['fd']:.3f} ± {r['fd_std']:.3f} | "
                     f"{spread_cell(r, 'fd2')} | "
                     f"{r['accuracy']:.3f} | {1e3 * r['seconds_per_image']:.2f} |" for r in result["rows"])
    floor2 = f", FD2 {result['floor_fd2']:.3f}" if "floor_fd2" in result else ""
    source = result.get("teacher_rows", "measured in this run")
    teacher = ("The teacher was measured in the same run, on the same seeds" if source.startswith("measured")
               else "The teacher's rows are the committed baseline of the same protocol and seeds "
                    f"({source.split(': ', 1)[-1]}; `eval.teacher_rows=measure` re-measures them)")
    return text + (
        f"\n## How the metrics were measured\n\nstepdistill's digits benchmark: Frechet distance (FD) of "
        f"{result['n_samples']} class-balanced samples per seed (seeds {result['seeds']}) against the digits "
        f"reference split, in the shipped digits classifier's penultimate features (FD) and in its pooled third "
        f"convolution (FD2, which resolves gaps near the teacher), and that classifier's accuracy on the samples; "
        f"real-vs-real floor FD {result['floor_fd']:.3f}{floor2}. {teacher}:\n\n"
        f"| model | sampler | NFE | FD | FD2 | accuracy | ms / image |\n|---|---|---|---|---|---|---|\n{rows}\n")


def _card_metrics(result: dict | None) -> dict:
    """The student's own row: the first on the digits benchmark, the last on the SR patches (after bicubic and
    the teacher's)."""
    if result is None:
        return {}
    if result.get("benchmark") == "sr_patches":
        row = result["rows"][-1]
        return {k: row[k] for k in ("psnr_y", "ssim_y", "hf_spectrum_error", "hf_energy_ratio", "seconds_per_image",
                                    "nfe")}
    row = result["rows"][0]
    return {k: row[k] for k in ("fd", "fd_std", "accuracy", "seconds_per_image", "nfe")}


def _sr_card_text(result: dict) -> str:
    rows = "\n".join(f"| {r['model']} | {r.get('sampler', '')} | {r['nfe']} | {r['psnr_y']:.2f} | {r['ssim_y']:.3f} | "
                     f"{r['hf_spectrum_error']:.3f} | {r['hf_energy_ratio']:.2f} | {1e3 * r['seconds_per_image']:.2f} |"
                     for r in result["rows"])
    return (f"\n## How the metrics were measured\n\nstepdistill's super-resolution benchmark: {result['n_patches']} "
            f"held-out natural-image patches, x{result['scale']}; PSNR / SSIM on the BT.601 Y channel with "
            f"{result['crop_border']} pixels cropped from each border, and the high-frequency spectrum error and "
            f"energy ratio above the low-resolution image's Nyquist frequency; bicubic and the teacher measured in "
            f"the same run:\n\n| model | sampler | NFE | PSNR-Y | SSIM-Y | HF spectrum error | HF energy | ms / image |\n"
            f"|---|---|---|---|---|---|---|---|\n{rows}\n")


def finish(students: list[AnyStudent], accelerator, *, output_dir: str | Path, evaluation: EvalConfig,
           export: ExportConfig, real_denoiser, schedule, steps_done: int, horizon: Horizon, train_minutes: float,
           config: dict) -> dict | None:
    """After training, with EMA weights in place: for each student, on the main process, a final sample
    grid, the digits benchmark when it applies, the export (`OUTPUT/pipeline`, or `OUTPUT/pipeline/<name>`
    for several students) and the upload; the results then record the minutes all this took. Returns the
    first benchmark result, if any."""
    started, first = time.time(), None
    # Measure and export the weights as a user runs them: float32, no DDP or autocast wrapper.
    students = [s.unwrapped(accelerator) for s in students]
    if accelerator.is_main_process:
        out = Path(output_dir)
        teacher = str(config.get("model", {}).get("teacher", ""))
        for student in students:
            broken = nonfinite(student.state_dict())
            if broken:  # never measured, never exported
                raise DivergenceError(f"the {student.name} student has non-finite weights ({broken[0]}, ...): "
                                      "not evaluated, not exported")
            tag = "" if len(students) == 1 else f"_{student.name}"
            save_samples(student, out / "samples" / f"final{tag}.png")
            result = None
            if evaluation.enabled and student.benchmarkable():
                result = evaluate_on_digits(student, real_denoiser, schedule, evaluation, steps_done=steps_done,
                                            horizon=horizon, train_minutes=train_minutes, config=config)
                first = first or result
            elif evaluation.enabled and is_sr_student(student):
                result = evaluate_on_patches(student, real_denoiser, schedule, evaluation, steps_done=steps_done,
                                             horizon=horizon, train_minutes=train_minutes, config=config)
                first = first or result
            if export.enabled:
                folder = out / "pipeline" if len(students) == 1 else out / "pipeline" / student.name
                card = {"metrics": _card_metrics(result), "license": export.license or teacher_license(teacher),
                        "extra": _card_text(result, steps_done=steps_done, horizon=horizon,
                                            train_minutes=train_minutes)}
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
