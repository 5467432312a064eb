"""MSD: multi-student distillation (Song et al. 2024, "Multi-student Diffusion Distillation for Better One-step
Generators"). No public code exists; this recipe follows the paper's description.

    accelerate launch recipes/msd.py                                         # digits: 4 students, 1 step each
    accelerate launch recipes/msd.py model.students=2 model.fake_score=shared
    accelerate launch --multi_gpu --num_processes 2 recipes/msd.py model.parallel=students   # 2 students each
    accelerate launch recipes/msd.py --resume latest

Algorithm: the condition space is split into K parts (contiguous class blocks; k-means on the prompts'
embeddings for text), and each part gets its own one-step student, initialised from the teacher and trained
with DMD2's distribution matching and GAN (`stepdistill.training.dmd`, the steps `recipes/dmd2.py` runs) on its
part only: its generator, fake score and discriminator see only its part's labels, and the GAN only its part's
real images. The teacher is shared; the fake score is one per student (`model.fake_score=per_student`) or one
for all, conditioned on the label and trained on every student's samples (`shared`: K generators and one fake
score in memory). Equal compute with a single student: the global batch is split among the students (each
step, K students x batch / K samples), so K students cost what one does.

Smaller students (`model.student_width` < 1: every block's channels scaled, about width^2 of the parameters)
cannot start from the teacher's weights: they first regress the teacher's denoiser on their part at the
teacher's noise levels for `model.tsm_steps` steps (Teacher Score Matching, on noised real images of the part),
then train as above; a smaller student is what makes one-step generation cheaper than one teacher call.

At sampling time each condition goes to the student that owns it (`stepdistill.student.RoutedStudent`); a
class-conditional export is one pipeline folder holding every student and the partition, whose pipeline routes
each label to its student in stock diffusers (the model card lists the partition).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from stepdistill import losses, sharding
from accelerate.utils import broadcast_object_list

from stepdistill.conditioning import ClassConditioner, TextConditioner
from stepdistill.denoiser import native_loss_weight
from stepdistill.distributed import LocalAccelerator
from stepdistill.partition import Partition, PartConditioner, class_blocks, kmeans, part_dataset
from stepdistill.networks import smaller_network
from stepdistill.roles import make_generator
from stepdistill.time_sampling import fake_score_times
from stepdistill.student import RoutedStudent, Student
from stepdistill.training import (EMBEDDED_MINUTES, RecipeConfig, Draw, Setup, TrainConfig, accumulate, cli, dmd,
                                  make_optimizer, run_recipe, trainable_params, update)

NAME = "msd"


@dataclass
class ModelConfig(dmd.ModelConfig):
    students: int = 4
    # "class_blocks": contiguous blocks of class ids; "kmeans": k-means on the prompts' mean token states (text)
    partition: Literal["class_blocks", "kmeans"] = "class_blocks"
    # "per_student": a fake score (and GAN head) per student; "shared": one, trained on every student's samples
    fake_score: Literal["per_student", "shared"] = "per_student"
    # < 1: smaller students, every block's channels times this (0.75: 45% fewer parameters on digits),
    # initialised by `tsm_steps` of Teacher Score Matching instead of the teacher's weights
    student_width: float = 1.0
    tsm_steps: int = 0
    # Several processes: "data", every process takes part in every student's step (data-parallel); "students",
    # each process owns students k = process, process + P, ... and trains them alone on their whole share, with
    # no gradient all-reduce between processes (synced at checkpoints and at the end; needs per-student fake scores)
    parallel: Literal["data", "students"] = "data"


@dataclass
class OptimConfig(dmd.OptimConfig):
    lr_tsm: float = 1e-3  # Teacher Score Matching: AdamW, constant after the shared warm-up


@dataclass
class MSDConfig(RecipeConfig):
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dmd.LossConfig = field(default_factory=dmd.LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(time_limit_minutes=EMBEDDED_MINUTES,
                                                                   max_steps=1600, output_dir="outputs/msd_digits"))


@dataclass(kw_only=True)
class Run:
    cfg: MSDConfig
    setup: Setup  # the whole condition space; each student's run holds a view restricted to its part
    partition: Partition
    runs: list[dmd.Run]  # one per student, in student order
    tsm: list  # per student: (optimiser, schedule) of the Teacher Score Matching stage; empty without one
    owned: list[int]  # the students this process trains (all of them unless model.parallel=students)


def partition(cfg: MSDConfig, s: Setup) -> Partition:
    """The split of `s`'s conditions among `model.students` students, checked before anything is built."""
    k, conditioner = cfg.model.students, s.conditioner
    if cfg.model.partition == "kmeans":
        if not isinstance(conditioner, TextConditioner):
            raise ValueError("model.partition=kmeans clusters prompts: it needs a text-to-image teacher (data.prompts)")
        labels = torch.arange(conditioner.num_classes, device=s.device)
        return kmeans(conditioner.embeddings(labels).mean(1).cpu(), k, seed=cfg.train.seed)
    if not isinstance(conditioner, (ClassConditioner, TextConditioner)):
        raise ValueError(f"multi-student distillation splits conditions; this teacher is conditioned by "
                         f"{type(conditioner).__name__}")
    if not 1 <= k <= conditioner.num_classes:
        raise ValueError(f"model.students={k} must lie in [1, {conditioner.num_classes}] (the number of conditions)")
    return class_blocks(conditioner.num_classes, k)


def setup(cfg: MSDConfig) -> Run:
    m = cfg.model
    if not 0 < m.student_width <= 1:
        raise ValueError(f"model.student_width={m.student_width} must lie in (0, 1] (1: the teacher's size)")
    if m.tsm_steps < 0 or (m.student_width < 1 and m.tsm_steps == 0):
        raise ValueError(f"model.tsm_steps={m.tsm_steps}: smaller students (model.student_width < 1) start from "
                         "random weights and need Teacher Score Matching steps (> 0); never negative")
    if m.tsm_steps >= cfg.train.max_steps:
        raise ValueError(f"model.tsm_steps={m.tsm_steps} must be fewer than train.max_steps={cfg.train.max_steps}")
    if cfg.data.streaming and (cfg.loss.gan or m.tsm_steps > 0):
        raise ValueError("msd: each student's GAN and teacher score matching read the real images of its own "
                         "conditions, picked by index; a stream (data.streaming=true) has no index: download the "
                         "dataset, or set data.shards")
    s = Setup.build(train=cfg.train, teacher=m.teacher, resume=cfg.resume, data=cfg.data,
                    need_images=cfg.loss.gan or m.tsm_steps > 0)
    if sharding.wanted(s.accelerator):  # K trios over views of the processes: not sharded (stepdistill.sharding)
        raise ValueError("msd trains its students data-parallel or one set per process (model.parallel), not "
                         "sharded: launch it without --use_fsdp / recipes/accelerate/fsdp.yaml")
    ts = dmd.check(cfg, s)
    split = partition(cfg, s)
    k, processes = split.num_students, s.accelerator.num_processes
    owning = m.parallel == "students" and processes > 1
    if owning and (k % processes or m.fake_score == "shared"):
        raise ValueError(f"model.parallel=students gives each of the {processes} processes model.students / "
                         f"{processes} students of their own: model.students={k} must be a multiple of it and "
                         f"model.fake_score must be per_student (got {m.fake_score})")
    if cfg.train.batch_size % (k * (1 if owning else processes)):
        raise ValueError(f"train.batch_size={cfg.train.batch_size} must be divisible by model.students={k}"
                         + ("" if owning else f" times {processes} process(es)") + ": each student takes an equal share")
    share = cfg.train.batch_size // k // (1 if owning else processes)  # each student's samples per process
    micro = cfg.train.micro_batch_size
    if micro is not None and share % micro:
        raise ValueError(f"train.micro_batch_size={micro} must divide each student's share of the batch per process "
                         f"({share}: train.batch_size / model.students / processes)")
    local = LocalAccelerator(s.accelerator) if owning else s.accelerator
    runs: list[dmd.Run] = []
    for student in range(k):
        part = split.part(student)
        real = part_dataset(s.dataset, part)  # the GAN's real images: those of the student's classes
        view = replace(s, accelerator=local, conditioner=PartConditioner(s.conditioner, part),
                       dataset=real, real=s.real and s.real.over(real), cache_suffix=f"_student{student}",
                       identity={**s.identity, "part": ",".join(map(str, part))})
        shared = runs[0] if runs and cfg.model.fake_score == "shared" else None
        generator = None
        if m.student_width < 1:
            small = smaller_network(s.teacher.net, m.student_width, seed=cfg.train.seed * 1_000 + student)
            generator = make_generator(s.teacher, float(ts[0]), network=small,
                                       gradient_checkpointing=m.gradient_checkpointing)
        runs.append(dmd.build(cfg, view, ts, generator=generator, share_fake_with=shared,
                              real_guided=runs[0].real_guided if runs else None, fake_adapter=f"fake_score_{student}"))
    tsm = []
    if m.tsm_steps > 0:
        for sub in runs:
            opt, sched = make_optimizer(trainable_params(sub.generator), lr=cfg.optim.lr_tsm, betas=(0.9, 0.999),
                                        warmup_steps=0, name="tsm")
            tsm.append(tuple(s.prepare(opt, sched)))
    owned = [i for i in range(k) if not owning or i % processes == s.accelerator.process_index]
    return Run(cfg=cfg, setup=s, partition=split, runs=runs, tsm=tsm, owned=owned)


def tsm_step(run: Run, sub: dmd.Run, draw: Draw, student: int) -> dict[str, float]:
    """Teacher Score Matching: the student's denoiser regresses the teacher's x0 (no guidance) on noised real
    images of its part at the teacher's training levels, in the teacher's parameterisation's weighting."""
    logs, _ = accumulate(draw, lambda view: tsm_loss(sub, view))
    opt, sched = run.tsm[student]
    update(sub.setup.accelerator, trainable_params(sub.generator), opt, sched, grad_clip=run.cfg.optim.grad_clip)
    return logs


def tsm_loss(sub: dmd.Run, draw: Draw) -> tuple[torch.Tensor, dict[str, float]]:
    s = sub.setup
    real, labels = draw.real(s.real)
    labels = labels if labels is not None else draw.labels(s.conditioner)  # uncaptioned images: its prompts
    x0 = s.space.encode(real)
    t = draw.times(fake_score_times("teacher"), s.schedule)
    x_t = s.schedule.add_noise(x0, draw.randn(*s.shape), t)
    cond = s.conditioner.cond(labels)
    with torch.no_grad():
        target = sub.real_guided.denoiser(x_t, t, **cond)
    weight = native_loss_weight(s.teacher.prediction_type, s.schedule.alpha(t), s.schedule.sigma(t))
    loss = losses.denoising_loss(sub.generator(x_t, t, **cond), target, weight)
    return loss, {"loss_tsm": loss.item()}


def student_draw(run: Run, draw: Draw, student: int, step: int) -> Draw:
    """Student k's share of the step's randomness: batch / K samples from its own seeded stream, the same
    for any number of processes."""
    k, train = run.partition.num_students, run.cfg.train
    accelerator = run.runs[student].setup.accelerator
    share = draw.batch // k  # each micro-batch of a student: train.micro_batch_size samples
    passes = 1 if train.micro_batch_size is None else share // accelerator.num_processes // train.micro_batch_size
    return Draw(accelerator, share, train.seed * 1_000 + student + 1, step, passes=passes)


def step(run: Run, draw: Draw, step: int) -> dict[str, float]:
    """Every student takes DMD2's step on its part (fake score every step, generator every update_ratio), after
    `model.tsm_steps` of Teacher Score Matching for smaller students. A shared fake score accumulates every
    student's loss and steps once, after the last student: its schedule counts training steps."""
    logs: dict[str, list[float]] = {}
    shared = run.cfg.model.fake_score == "shared"
    for student in run.owned:
        sub = run.runs[student]
        mine = student_draw(run, draw, student, step)
        # a shared fake score takes one update a step, on every student's samples (the mean of their losses)
        update = dmd.FakeUpdate(1 / len(run.owned), apply=student == run.owned[-1]) if shared else dmd.FakeUpdate()
        out = (tsm_step(run, sub, mine, student) if step < run.cfg.model.tsm_steps
               else dmd.step(sub, mine, step, fake_update=update))
        for key, value in out.items():
            logs.setdefault(key, []).append(float(value))
    return {key: sum(values) / len(values) for key, values in logs.items()}  # the mean over its students


def sync(run: Run) -> None:
    """With process-owned students: every student's weights, optimiser, schedule, EMA and GAN weight go from
    its owner to every process (before each checkpoint, which the main process writes, and at the end)."""
    s = run.setup
    if len(run.owned) == len(run.runs):
        return
    for student, sub in enumerate(run.runs):
        objects = [m for m in (sub.generator, sub.fake_score, sub.head, sub.opt_g, sub.opt_f, sub.sched_g,
                               sub.sched_f, sub.ema, sub.gan_weight) if m is not None]
        if run.tsm:
            objects += list(run.tsm[student])
        state = [[o.state_dict() for o in objects] if student in run.owned else None]
        broadcast_object_list(state, from_process=student % s.accelerator.num_processes)
        for o, value in zip(objects, state[0]):
            o.load_state_dict(value)


def students(run: Run) -> list[RoutedStudent]:
    # on the whole condition space's setup: a student conditions as the teacher does; the router picks it
    each = [Student.from_setup(run.setup, generator=sub.generator, timesteps=sub.ts, ema=sub.ema, name=NAME)
            for sub in run.runs]
    routing = {"owner": list(run.partition.owner), "partition": run.partition.to_json()}
    return [RoutedStudent(students=each, route=run.partition.route, routing=routing, name=NAME)]


# Planning (`--plan`, `stepdistill.training.plan`): the roles `setup` builds, declared for the memory plan.

def plan_roles(cfg: MSDConfig) -> list:
    """The shared frozen teacher, then DMD's trio per student k (`generator_k`, `fake_score_k`, `head_k`; each
    student steps on batch / K, one student after another); a shared fake score and its head are the first
    student's, and every student's updates pass through them."""
    from stepdistill.training.plan import PlannedRole, dmd_roles

    m = cfg.model
    k = m.students
    roles = [PlannedRole.teacher()]
    for student in range(k):
        mine = dmd_roles(cfg, f"_{student}", batch=1 / k, width=m.student_width, tsm=m.tsm_steps > 0)
        if m.fake_score == "shared" and student > 0:
            shared = {f"fake_score_{student}": "fake_score_0", f"head_{student}": "head_0"}
            passes = {shared[r.name]: r.passes for r in mine if r.name in shared}
            roles = [replace(r, passes=r.passes + passes[r.name]) if r.name in passes else r for r in roles]
            mine = [r for r in mine if r.name not in shared]
        roles += mine
    return roles


def main(cfg: MSDConfig) -> dict | None:
    return run_recipe(sys.modules[__name__], cfg)


if __name__ == "__main__":
    cli(sys.modules[__name__], MSDConfig)
