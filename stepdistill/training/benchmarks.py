"""The end-of-run benchmarks: each says which students it measures, measures them and writes their model card's
rows. `finish` loops over `BENCHMARKS`; a student no benchmark applies to (a text-to-image one) is measured by
`eval/evaluate.py` on its export. Adding a benchmark is adding an entry (docs/adding_a_method.md).

    applies(student)          -> whether it measures this student
    evaluate(student, run)    -> the result (also written to `eval.results`)
    card(result)              -> (the model card's metrics, the card's "how it was measured" text)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..digits_benchmark import (DIGITS_SHAPE, TEACHER_TABLE, DigitsBenchmark, default_row, is_shipped_teacher,
                                markdown_table, spread_cell, table_rows, teacher_sample_fn)
from ..io import atomic_write_text
from ..local_paths import public_command
from ..ops import fused_losses_record
from ..samplers import steps_for_nfe
from ..sr_benchmark import evaluate_sr_student, format_row
from ..student import AnyStudent
from .horizon import Horizon
from .sections import EvalConfig

__all__ = ["Benchmark", "RunFacts", "BENCHMARKS", "DigitsRun", "ForgettingDigitsRun", "PatchesRun", "teacher_rows", "evaluate_on_digits",
           "evaluate_on_patches"]


@dataclass
class RunFacts:
    """What a benchmark needs of the run besides the student."""

    real_denoiser: Any
    schedule: Any
    evaluation: EvalConfig
    steps_done: int
    horizon: Horizon
    train_minutes: float
    config: dict


class Benchmark(Protocol):
    name: str

    def applies(self, student: AnyStudent) -> bool: ...

    def evaluate(self, student: AnyStudent, run: RunFacts) -> dict: ...

    def card(self, result: dict) -> tuple[dict, str]: ...


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


def evaluate_on_digits(student: AnyStudent, real_denoiser, schedule, evaluation: EvalConfig, *, steps_done: int,
                       horizon: Horizon, train_minutes: float, config: dict) -> dict:
    """The student's rows and the teacher's (see `teacher_rows`) on the digits benchmark, written to
    `evaluation.results` and printed as a table; same row schema as the teacher baseline. `config`: the
    run's configuration as a dict, recorded with the result."""
    bench = DigitsBenchmark()
    floor = bench.floor()
    seeds = list(evaluation.seeds)
    steps = [None] + [k for k in evaluation.student_steps if k != student.nfe]
    gamma = student.sampler.gamma  # a consistency student sampled by TCD's gamma (MLCM: 0)
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
        fused_losses=fused_losses_record(), config=config, rows=rows,
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
                  train_minutes=round(train_minutes, 2), torch_threads=torch.get_num_threads(),
                  fused_losses=fused_losses_record(), config=config)
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


class DigitsRun:
    """The digits benchmark (`digits_benchmark`): class-conditional 16x16 one-channel students."""

    name = "digits"

    def applies(self, student: AnyStudent) -> bool:
        return all(s.conditioner.kind == "class" and tuple(s.shape) == DIGITS_SHAPE for s in student.members)

    def evaluate(self, student: AnyStudent, run: RunFacts) -> dict:
        return evaluate_on_digits(student, run.real_denoiser, run.schedule, run.evaluation, steps_done=run.steps_done,
                                  horizon=run.horizon, train_minutes=run.train_minutes, config=run.config)

    def card(self, result: dict) -> tuple[dict, str]:
        row = result["rows"][0]
        metrics = {k: row[k] for k in ("fd", "fd_std", "accuracy", "seconds_per_image", "nfe")}
        rows = "\n".join(f"| {r['model']} | {r['sampler']} | {r['nfe']} | {r['fd']:.3f} ± {r['fd_std']:.3f} | "
                         f"{spread_cell(r, 'fd2')} | "
                         f"{r['accuracy']:.3f} | {1e3 * r['seconds_per_image']:.2f} |" for r in result["rows"])
        floor2 = f", FD2 {result['floor_fd2']:.3f}" if "floor_fd2" in result else ""
        source = result.get("teacher_rows", "measured in this run")
        teacher = ("The teacher was measured in the same run, on the same seeds" if source.startswith("measured")
                   else "The teacher's rows are the committed baseline of the same protocol and seeds "
                        f"({source.split(': ', 1)[-1]}; `eval.teacher_rows=measure` re-measures them)")
        return metrics, (
            f"\n## How the metrics were measured\n\nstepdistill's digits benchmark: Frechet distance (FD) of "
            f"{result['n_samples']} class-balanced samples per seed (seeds {result['seeds']}) against the digits "
            f"reference split, in the shipped digits classifier's penultimate features (FD) and in its pooled third "
            f"convolution (FD2, which resolves gaps near the teacher), and that classifier's accuracy on the samples; "
            f"real-vs-real floor FD {result['floor_fd']:.3f}{floor2}. {teacher}:\n\n"
            f"| model | sampler | NFE | FD | FD2 | accuracy | ms / image |\n|---|---|---|---|---|---|---|\n{rows}\n")


class PatchesRun:
    """The super-resolution benchmark (`sr_benchmark`): students conditioned on a low-resolution image."""

    name = "sr_patches"

    def applies(self, student: AnyStudent) -> bool:
        return all(s.conditioner.kind == "lr" for s in student.members)

    def evaluate(self, student: AnyStudent, run: RunFacts) -> dict:
        return evaluate_on_patches(student, run.real_denoiser, run.schedule, run.evaluation, steps_done=run.steps_done,
                                   horizon=run.horizon, train_minutes=run.train_minutes, config=run.config)

    def card(self, result: dict) -> tuple[dict, str]:
        row = result["rows"][-1]
        metrics = {k: row[k] for k in ("psnr_y", "ssim_y", "hf_spectrum_error", "hf_energy_ratio",
                                       "seconds_per_image", "nfe")}
        rows = "\n".join(f"| {r['model']} | {r.get('sampler', '')} | {r['nfe']} | {r['psnr_y']:.2f} | "
                         f"{r['ssim_y']:.3f} | {r['hf_spectrum_error']:.3f} | {r['hf_energy_ratio']:.2f} | "
                         f"{1e3 * r['seconds_per_image']:.2f} |" for r in result["rows"])
        return metrics, (
            f"\n## How the metrics were measured\n\nstepdistill's super-resolution benchmark: {result['n_patches']} "
            f"held-out natural-image patches, x{result['scale']}; PSNR / SSIM on the BT.601 Y channel with "
            f"{result['crop_border']} pixels cropped from each border, and the high-frequency spectrum error and "
            f"energy ratio above the low-resolution image's Nyquist frequency; bicubic and the teacher measured in "
            f"the same run:\n\n| model | sampler | NFE | PSNR-Y | SSIM-Y | HF spectrum error | HF energy "
            f"| ms / image |\n|---|---|---|---|---|---|---|---|\n{rows}\n")


class ForgettingDigitsRun(DigitsRun):
    """The digits benchmark of a student trained to forget digits (SFD, `Student.forgetting`): the digits rows, and
    the forgetting figures (`forgetting_benchmark`) of the student and of the teacher's default sampler."""

    name = "digits_forgetting"

    def applies(self, student: AnyStudent) -> bool:
        return super().applies(student) and (getattr(student, "forgetting", None) or {}).get("form") == "class"

    def evaluate(self, student: AnyStudent, run: RunFacts) -> dict:
        result = super().evaluate(student, run)
        result.update(forgetting_on_digits(student, run.real_denoiser, run.schedule, run.evaluation))
        atomic_write_text(run.evaluation.results, json.dumps(result, indent=2) + "\n")
        f = result["forgetting"]
        print(f"forgotten {f['forget']} recognised in {f['student']['forget_recognised']:.1%} of their samples "
              f"(teacher {f['teacher']['forget_recognised']:.1%}), override {f['student']['override_fraction']:.1%}; "
              f"retained-class FD {f['student']['retained_fd']:.3f} vs the teacher's {f['teacher']['retained_fd']:.3f} "
              f"({f['retained_fd_ratio']:.2f}x)")
        return result

    def card(self, result: dict) -> tuple[dict, str]:
        metrics, text = super().card(result)
        f = result["forgetting"]
        s, t = f["student"], f["teacher"]
        metrics = dict(metrics, forget_recognised=s["forget_recognised"], override_fraction=s["override_fraction"],
                       retained_fd=s["retained_fd"])
        return metrics, text + (
            f"\nForgetting (stepdistill.forgetting_benchmark), samples asked for the forgotten digits {f['forget']} "
            f"(override {f['override']}) and for every retained digit, same seeds:\n\n"
            f"| model | forgotten digit recognised | labelled as the override | retained-class FD |\n|---|---|---|---|\n"
            f"| student | {s['forget_recognised']:.3f} | {s['override_fraction']:.3f} | {s['retained_fd']:.3f} |\n"
            f"| teacher ({t['sampler']}, {t['nfe']} NFE) | {t['forget_recognised']:.3f} | {t['override_fraction']:.3f} | "
            f"{t['retained_fd']:.3f} |\n")


def forgetting_on_digits(student: AnyStudent, real_denoiser, schedule, evaluation: EvalConfig) -> dict:
    """{"forgetting": the student's and the teacher's forgetting figures, and the retained-class FD ratio}."""
    from ..data.digits import NUM_CLASSES
    from ..forgetting_benchmark import RetainedSpace, forgetting_scores

    bench, record, seeds = DigitsBenchmark(), student.forgetting, list(evaluation.seeds)
    space = RetainedSpace(bench, [c for c in range(NUM_CLASSES) if c not in record["forget"]])
    mine = forgetting_scores(bench, student.sample_fn(), record["forget"], record["override"], seeds, space)
    sampler, nfe = evaluation.teacher_sampler, evaluation.teacher_nfe
    teacher_fn = teacher_sample_fn(real_denoiser, schedule, sampler=sampler, steps=steps_for_nfe(sampler, nfe),
                                   shape=student.shape)
    theirs = dict(forgetting_scores(bench, teacher_fn, record["forget"], record["override"], seeds, space),
                  sampler=sampler, nfe=nfe)
    return {"forgetting": dict(forget=record["forget"], override=record["override"], student=mine, teacher=theirs,
                               retained_fd_ratio=mine["retained_fd"] / theirs["retained_fd"])}


BENCHMARKS: list[Benchmark] = [ForgettingDigitsRun(), DigitsRun(), PatchesRun()]
