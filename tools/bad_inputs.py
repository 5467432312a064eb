"""Bad inputs and the one message each gets: recipes' command lines and the evaluation harness.

Every case runs in this process against a tiny random digits-shaped teacher (so a case that wrongly
passes trains one step, not the default run). A recipe case must exit with status 2 and print one line,
`error: ...`, naming the key or path at fault, before any training step; so must an evaluation-harness
case, before any image is generated or scored. `tests/test_bad_inputs.py` checks every case.

    python tools/bad_inputs.py            # -> tools/results/bad_inputs.md
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an unknown Hub dataset is refused at once, not after retries
RESULTS = ROOT / "tools" / "results" / "bad_inputs.md"
sys.path.insert(0, str(ROOT / "recipes"))  # the recipes are scripts: recipes/registry.py lists them
from registry import RECIPES  # noqa: E402
# what a case that wrongly passes would run: one step, nothing measured or exported
SAFE = ["train.max_steps=1", "optim.warmup_steps=0", "eval.enabled=false", "export.enabled=false",
        "train.time_limit_minutes=null"]


@dataclass(frozen=True)
class Case:
    target: str  # a recipe name, or "evaluate"
    argv: tuple[str, ...]  # {teacher}, {tmp}, {file}, {root} (the checkout) are filled in
    expect: str  # a fragment the message must contain


CKPT = "checkpoints/step_00000001"

CASES = [
    Case("dmd2", ("train.batch_size=0",), "train.batch_size=0 must be positive"),
    Case("dmd2", ("train.batch_size=-4",), "train.batch_size=-4 must be positive"),
    Case("dmd2", ("train.max_steps=0",), "train.max_steps=0 must be >= 1"),
    Case("dmd2", ("train.max_steps=-5",), "train.max_steps=-5 must be >= 1"),
    Case("dmd2", ("train.checkpoint_every=0",), "train.checkpoint_every=0 must be >= 1"),
    Case("dmd2", ("train.log_every=0",), "train.log_every=0 must be >= 1"),
    Case("dmd2", ("train.sample_every=0",), "train.sample_every=0 must be >= 1"),
    Case("dmd2", ("train.keep_checkpoints=-1",), "train.keep_checkpoints=-1 must be >= 0"),
    Case("dmd2", ("train.max_nonfinite_steps=0",), "train.max_nonfinite_steps=0 must be >= 1"),
    Case("dmd2", ("train.mixed_precision=fp8",), "train.mixed_precision"),
    Case("dmd2", ("train.time_limit_minutes=-1",), "train.time_limit_minutes=-1.0 must be >= 0"),
    Case("dmd2", ("train.batch_size=8", "train.micro_batch_size=3", "loss.gan_balance=null"),
         "train.micro_batch_size=3 must divide each process's share of train.batch_size=8"),
    Case("dmd2", ("train.batch_size=8", "train.micro_batch_size=0"), "train.micro_batch_size=0 must divide"),
    Case("dmd2", ("train.batch_size=8", "train.micro_batch_size=2"),
         "loss.gan_balance=1.0 sets the GAN weight from the whole batch's gradient norms"),
    Case("msd", ("train.batch_size=8", "model.students=4", "train.micro_batch_size=4", "loss.gan_balance=null"),
         "train.micro_batch_size=4 must divide each student's share"),
    Case("dmd2", ("train.fused_losses=maybe",), "train.fused_losses"),
    Case("dmd2", ("train.compile=sometimes",), "train.compile"),
    Case("dmd2", ("--config", "{root}/recipes/configs/dmd2/sd15.yaml", "model.teacher={tmp}/no_teacher", "--plan"),
         "no_teacher"),
    Case("dmd2", ("--gpus", "8"), "--gpus"),
    Case("dmd2", ("eval.teacher_rows=true",), "eval.teacher_rows"),
    Case("dmd2", ("train.max_stepz=3",), "train.max_stepz"),
    Case("dmd2", ("train.max_steps=abc",), "train.max_steps"),
    Case("dmd2", ("optim.lr_generator=-1e-4",), "optim.lr_generator=-0.0001 must be > 0"),
    Case("dmd2", ("optim.lr_fake=0",), "optim.lr_fake=0.0 must be > 0"),
    Case("dmd2", ("optim.betas=[0.9,1.5]",), "optim.betas=[0.9, 1.5] must be two values in [0, 1)"),
    Case("dmd2", ("optim.weight_decay=-0.1",), "optim.weight_decay=-0.1 must be >= 0"),
    Case("dmd2", ("optim.grad_clip=0",), "optim.grad_clip=0.0 must be > 0"),
    Case("dmd2", ("optim.warmup_steps=-1",), "optim.warmup_steps=-1 must be >= 0"),
    Case("dmd2", ("optim.update_ratio=0",), "optim.update_ratio=0 must be >= 1"),
    Case("dmd2", ("optim.lr_schedule=exponential",), "optim.lr_schedule"),
    Case("dmd2", ("train.max_steps=50", "optim.warmup_steps=100"),
         "optim.warmup_steps=100 must be shorter than train.max_steps=50"),
    Case("dmd2", ("model.teacher=/no/such/folder",), "not a local folder"),
    Case("dmd2", ("model.teacher={file}",), "is a file"),
    Case("dmd2", ("model.teacher={tmp}/no_scheduler",), "no scheduler/scheduler_config.json"),
    Case("dmd2", ("model.generator_timesteps=[]",), "model.generator_timesteps must descend"),
    Case("dmd2", ("model.generator_timesteps=[499,999]",), "model.generator_timesteps must descend"),
    Case("dmd2", ("model.generator_timesteps=[1500]",), "model.generator_timesteps must descend"),
    Case("dmd2", ("loss.regression_weight=-1",), "loss.regression_weight >= 0"),
    Case("dmd2", ("data.prompt_dropout=1.5",), "data.prompt_dropout=1.5 must lie in [0, 1)"),
    Case("dmd2", ("data.embedding_cache_mib=0",), "data.embedding_cache_mib=0.0 must be > 0"),
    Case("dmd2", ("data.prompts=/no/such/prompts.txt",), "/no/such/prompts.txt"),
    Case("dmd2", ("data.images=/no/such/images",), "/no/such/images"),
    Case("dmd2", ("eval.results=/proc/no/results.json",), "eval.results: cannot create /proc/no"),
    Case("dmd2", ("train.output_dir=/proc/no/run",), "train.output_dir: cannot create /proc/no"),
    Case("dmd2", ("resume=/no/such/checkpoint",), "resume checkpoint /no/such/checkpoint does not exist"),
    Case("dmd2", ("--config", "/no/such/preset.yaml"), "/no/such/preset.yaml"),
    Case("dmd2", ("--config", "{tmp}/unknown_key.yaml"), "model.teachr"),
    Case("dmd2", ("train.batch_size",), "expected key=value"),
    Case("sid", ("model.generator_timesteps=[999,499]",), "one-step"),
    Case("sid", ("optim.eps=0",), "optim.eps=0.0 must be > 0"),
    Case("sid", ("loss.time_sampling=uniform",), "loss.time_sampling"),
    Case("sim", ("loss.weighting=cosine",), "loss.weighting"),
    Case("swiftbrush", ("model.lora_rank=0",), "model.lora_rank=0"),
    Case("swiftbrush", ("optim.lr_lora=-1",), "optim.lr_lora=-1.0 must be > 0"),
    Case("consistency_distill", ("loss.segments=[2,4]",), "non-increasing"),
    Case("consistency_distill", ("loss.w_min=4", "loss.w_max=2"), "need 0 <= w_min <= w_max"),
    Case("consistency_distill", ("loss.target_decay=1",), "loss.target_decay=1.0 must lie in [0, 1)"),
    Case("consistency_distill", ("loss.solver=heun",), "loss.solver=heun"),
    Case("consistency_distill", ("loss.levels=7",), "loss.levels"),
    Case("consistency_distill", ("model.inference_steps=60",), "model.inference_steps=60"),
    Case("consistency_distill", ("model.gamma=1.5",), "model.gamma=1.5 must lie in [0, 1]"),
    Case("consistency_distill", ("model.guidance_embedding_dim=32",), "time_cond_proj_dim"),
    Case("consistency_distill", ("eval.student_steps=[1,64]",), "eval.student_steps"),
    Case("ect", ("loss.q=1",), "loss.q=1.0 > 1"),
    Case("ect", ("loss.p_std=0",), "loss.p_std=0.0 must be > 0"),
    Case("ect", ("model.dropout=1.5",), "model.dropout"),
    Case("ect", ("model.sigma_min=0.0001",), "model.sigma_min=0.0001 lies below"),
    Case("ect", ("model.inference_steps=9",), "model.inference_steps=9 must lie in [1, model.sampling_levels=8]"),
    Case("dmd2", ("data.resolution=64",), "data.resolution=64 applies to text-to-image teachers"),
    Case("dmd2", ("data.embedded_guidance=3.5",), "data.embedded_guidance=3.5 applies to text-to-image teachers"),
    Case("dmd2", ("model.teacher=tiny-flux", "data.prompts={root}/assets/prompts/smoke.txt", "data.resolution=72"),
         "data.resolution=72 must be a positive multiple of 16"),
    Case("dmd2", ("model.teacher=tiny-sd3", "data.prompts={root}/assets/prompts/smoke.txt", "data.resolution=64",
                  "loss.gan=false", "model.generator_timesteps=[999]"), "model.generator_timesteps must descend within [0, 1.0]"),
    Case("sid", ("model.teacher=tiny-sdxl", "data.prompts={root}/assets/prompts/smoke.txt", "data.embedded_guidance=2"),
         "data.embedded_guidance=2.0 applies to text-to-image teachers that embed the guidance scale"),
    # BOOT: a grid its steps do not divide, guidance below 1, real images for a data-free recipe
    Case("boot", ("model.steps=3",), "loss.levels=32 must be a positive multiple of model.steps=3"),
    Case("boot", ("loss.guidance=0.5",), "loss.guidance=0.5 must be >= 1"),
    Case("boot", ("data.images={tmp}/captioned",), "boot is data-free: it reads no images; unset data.images"),
    Case("sfd", ("loss.forget=[3]", "loss.override=[3]"), "loss.override=[3] names a forgotten class ([3])"),
    Case("sfd", ("loss.forget=[10]",), "loss.forget / loss.override name a class outside 0..9: [10, 8]"),
    Case("sfd", ("loss.forget=[3,5]", "loss.override=[8]"), "needs one class per forgotten class ([3, 5]), or 'random'"),
    Case("sfd", ("loss.forget_coef=-1",), "the SFD coefficients must be >= 0"),
    Case("sfd", ("model.teacher=tiny-sd", "data.prompts={root}/assets/prompts/smoke.txt", "data.resolution=64"),
         "sfd on a text-to-image teacher forgets prompts: set loss.forget_prompts"),
    Case("sfd", ("model.teacher=tiny-sd", "data.prompts={root}/assets/prompts/smoke.txt", "data.resolution=64",
                 "loss.forget_prompts={root}/assets/prompts/smoke.txt"),
         "loss.forget_prompts needs exactly one mapping to the teacher's prompts"),
    Case("msd", ("model.students=11",), "model.students=11 must lie in [1, 10]"),
    Case("msd", ("train.batch_size=6",), "train.batch_size=6 must be divisible by model.students=4"),
    Case("msd", ("model.student_width=1.5",), "model.student_width=1.5 must lie in (0, 1]"),
    Case("msd", ("model.student_width=0.75",), "model.tsm_steps=0: smaller students"),
    Case("msd", ("model.partition=kmeans",), "model.partition=kmeans clusters prompts"),
    Case("dmd2", ("loss.gan_start_step=1",), "loss.gan_start_step=1 must lie in [0, train.max_steps=1)"),
    Case("tadsr", (), "TAD-SR distils a super-resolution teacher"),
    Case("tadsr", ("model.teacher={sr}", "loss.hsd_max_t=0"), "loss.hsd_max_t=0.0 must lie in (0, 1]"),
    Case("tadsr", ("model.teacher={sr}", "loss.gan_weight=-1"), "loss.gan_weight=-1.0 must be >= 0"),
    Case("tadsr", ("model.teacher={sr}", "loss.hsd_noise=laplace"), "loss.hsd_noise"),
    Case("tadsr", ("model.teacher={sr}", "data.degradation_jpeg=0"), "jpeg_quality must lie in [1, 100]"),
    Case("tadsr", ("model.teacher={sr}", "data.condition_scale=3"), "data.condition_scale=3 must divide"),
    Case("yonos", ("model.teacher={sr}",), "model.student_scale=4 must be larger than the teacher's scale 4"),
    # non-finite values, folders where files go, damaged and foreign checkpoints, folders in use, corrupt images
    Case("consistency_distill", ("loss.w_max=.inf",), "config key 'loss.w_max' must be a finite number; got inf"),
    Case("consistency_distill", ("loss.w_min=nan",), "config key 'loss.w_min' must be a finite number"),
    Case("dmd2", ("optim.lr_generator=inf",), "config key 'optim.lr_generator' must be a finite number"),
    Case("dmd2", ("train.time_limit_minutes=.nan",), "config key 'train.time_limit_minutes' must be a finite number"),
    Case("tadsr", ("model.teacher={sr}", "data.degradation_noise=-.inf"), "'data.degradation_noise' must be a finite"),
    Case("dmd2", ("eval.results={tmp}",), "is a folder; name a file"),
    Case("dmd2", ("train.output_dir={file}",), "train.output_dir: cannot create"),
    Case("dmd2", ("resume={tmp}/foreign/checkpoints/step_00000001",),
         "settings that define the run changed (optim.update_ratio: checkpoint 3, now 5; train.seed: checkpoint 7, now 0)"),
    Case("dmd2", ("resume={tmp}/damaged/checkpoints/step_00000001",),
         "student.safetensors: truncated or not a safetensors file"),
    Case("dmd2", ("train.output_dir={tmp}/damaged", "resume=latest"), "every checkpoint in"),
    Case("dmd2", ("train.output_dir={tmp}/busy",), "busy is in use by another run (pid 1,"),
    Case("dmd2", ("train.output_dir={tmp}/elsewhere",), "is in use by another run (pid 4242 on host gpu-node-7"),
    Case("dmd2", ("data.images={tmp}/bad_jpeg", "loss.gan=true"), "bad_jpeg/cut.jpg: image file is truncated"),
    Case("dmd2", ("data.images={tmp}/bad_png", "loss.gan=true"), "bad_png/cut.png: "),
    Case("dmd2", ("data.images={tmp}/bad_webp", "data.skip_corrupt=true", "loss.gan=true"), "all 1 images under"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "digits", "--nfe", "0"), "--nfe"),
    Case("evaluate", ("gen", "--protocol", "no_such_protocol", "--model", "digits"), "no_such_protocol"),
    Case("evaluate", ("calc", "--protocol", "digits"), "no generated digits sets"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/checkpoints/step_00000004.tmp", "--nfe", "1"),
         "incomplete checkpoint"),
    Case("evaluate", ("sr", "--model", "{teacher}"), "not a super-resolution model"),
    Case("evaluate", ("sr", "--model", "{sr}", "--nfe", "0"), "--nfe"),
    Case("evaluate", ("sr", "--model", "{sr}", "--lr-dir", "{tmp}/no_such_folder"), "is not a folder"),
    Case("evaluate", ("sr", "--model", "{sr}", "--hr-dir", "{tmp}"), "give --lr-dir too"),
    # every input kind recognised or refused with what it is; damaged files named; outputs checked before work
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/lora", "--nfe", "1"), "is a LoRA export"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/cut_student/" + CKPT),
         "student.safetensors: truncated or not a safetensors file"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/cut_index"),
         "model_index.json: truncated or not a JSON file"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/cut_config/" + CKPT),
         "config.yaml: truncated or not a YAML file"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/short_config/" + CKPT),
         "config.yaml: truncated or incomplete"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/no_weights/" + CKPT),
         "is not a complete training checkpoint: it has no student.safetensors"),
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/no_weights"), "training run's output folder"),
    Case("evaluate", ("sr", "--model", "{sr}", "--nfe", "1", "--results", "{tmp}"), "is a folder; give the file to write"),
    Case("evaluate", ("sr", "--model", "{sr}", "--nfe", "1", "--save-images", "{file}/images"), "is a file"),
    Case("evaluate", ("calc", "--protocol", "digits", "--results", "{tmp}"), "is a folder; give the file to write"),
    # how a student samples is recorded (student.json); where real images come from is the teacher's record
    Case("evaluate", ("gen", "--protocol", "digits", "--model", "{tmp}/old_export", "--nfe", "1"),
         "is an export without student.json"),
    Case("consistency_distill", ("model.teacher=digits-edm", "model.boundary=cm", "loss.solver_zero=lowest_level"),
         "loss.solver_zero=lowest_level is a VP-discrete teacher's alphas_cumprod[0]"),
    Case("dmd2", ("model.teacher={tmp}/own_teacher", "loss.gan=true"), "needs real images: set data.images"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.prompts={root}/assets/prompts/smoke.txt", "data.images={tmp}/classes",
                  "loss.gan=true"), "has class sub-folders (a, b); a text-to-image run draws its prompts"),
    # paired sources: a column that is not there, a corrupt image, an empty shard, an unknown dataset, two sources
    Case("dmd2", ("model.teacher=tiny-sd", "data.images={tmp}/captioned", "data.caption_column=prompt_en",
                  "loss.gan=true"), "metadata.jsonl has no caption column 'prompt_en'; its columns: ['file_name', 'text']"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.images={tmp}/captioned_cut", "loss.gan=true"),
         "captioned_cut/1.png: "),
    Case("dmd2", ("model.teacher=tiny-sd", "data.shards={tmp}/shards/part-{{000..001}}.tar", "loss.gan=true"),
         "part-001.tar holds no samples"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.dataset=nobody/no-such-dataset", "loss.gan=true"),
         "data.dataset=nobody/no-such-dataset: could not be loaded"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.dataset={tmp}/no_such_saved_dataset", "loss.gan=true"),
         "no_such_saved_dataset: no such folder"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.images={tmp}/captioned", "data.dataset=nobody/x", "loss.gan=true"),
         "real images come from one source; set only one of data.images, data.dataset"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.loader_workers=-1"), "data.loader_workers=-1 must be >= 0"),
    # streamed datasets: no dataset to stream, no prompt file for the generator, a second source, MSD's parts
    Case("dmd2", ("model.teacher=tiny-sd", "data.streaming=true", "data.images={tmp}/captioned"),
         "data.streaming=true streams data.dataset"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.streaming=true", "data.dataset=nobody/x"),
         "the generator's prompts come from data.prompts"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.streaming=true", "data.dataset=nobody/x",
                  "data.prompts={root}/assets/prompts/smoke.txt", "data.shuffle_buffer=-1"),
         "data.shuffle_buffer=-1 must be >= 0"),
    Case("msd", ("model.teacher=tiny-sd", "data.streaming=true", "data.dataset=nobody/x"),
         "a stream (data.streaming=true) has no index"),
    Case("dmd2", ("model.teacher=tiny-sd", "loss.gan=true"), "a text-to-image teacher needs prompts: data.prompts"),
    Case("dmd2", ("model.teacher=tiny-sd", "data.precomputed={tmp}/captioned"), "no index.json (write the folder with"),
    Case("dmd2", ("data.precomputed={tmp}/captioned",), "precomputed latents serve text-to-image teachers"),
    Case("dmd2", ("train.validation_labels=[1,12]",), "train.validation_labels=[1, 12]: 12 is not a class of this teacher"),
    Case("dmd2", ("train.validation_prompts=[a cat]",), "train.validation_prompts applies to text-to-image teachers"),
    Case("consistency_distill", ("model.boundary=cm", "export.enabled=true"),
         "export.enabled: the export's LCMScheduler applies LCM's boundary condition"),
]


def prepare(tmp: Path) -> dict[str, str]:
    """The files the cases refer to: a teacher, a plain file, a teacher folder without a scheduler, a preset
    with a misspelt key, a half-written checkpoint, a super-resolution teacher."""
    from stepdistill.tiny import build_tiny_class_conditional

    from stepdistill.tiny import build_tiny_super_resolution

    teacher = build_tiny_class_conditional(tmp / "teacher")
    build_tiny_super_resolution(tmp / "sr")
    (tmp / "a_file").write_text("not a teacher\n")
    build_tiny_class_conditional(tmp / "no_scheduler")
    for f in (tmp / "no_scheduler" / "scheduler").iterdir():
        f.unlink()
    (tmp / "unknown_key.yaml").write_text("model:\n  teachr: digits\n")
    half = tmp / "checkpoints" / "step_00000004.tmp"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"")
    run_folders(tmp, teacher)
    corrupt_images(tmp)
    paired_sources(tmp)
    evaluation_inputs(tmp, teacher)
    return {"teacher": str(teacher), "tmp": str(tmp), "file": str(tmp / "a_file"), "root": str(ROOT),
            "sr": str(tmp / "sr")}


def run_folders(tmp: Path, teacher: Path) -> None:
    """A checkpoint of another run (seed 7, update ratio 3), a damaged one, a folder held by a live run (pid 1,
    always running) and one held by a run on another host."""
    import json
    import socket

    import yaml

    from stepdistill.config import apply_overrides, to_dict
    from stepdistill.run_lock import LOCK_FILE

    dmd2 = RECIPES["dmd2"].config_class()
    foreign = tmp / "foreign" / "checkpoints" / "step_00000001"
    foreign.mkdir(parents=True)
    (foreign / "step.json").write_text('{"step": 1}')
    config = apply_overrides(dmd2(), [f"model.teacher={teacher}", *SAFE, "train.seed=7", "optim.update_ratio=3"])
    (foreign / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    damaged = tmp / "damaged" / "checkpoints" / "step_00000001"
    damaged.mkdir(parents=True)
    (damaged / "step.json").write_text('{"step": 1}')
    (damaged / "student.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    for name, pid, host in (("busy", 1, socket.gethostname()), ("elsewhere", 4242, "gpu-node-7")):
        (tmp / name).mkdir()
        (tmp / name / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host}))


def evaluation_inputs(tmp: Path, teacher: Path) -> None:
    """Inputs evaluate.py refuses: a LoRA export, a cut model_index.json, checkpoints with a cut student, a cut
    config.yaml (unparsable, or parsable but short), no weights; an export without student.json; a teacher folder
    with no record of the data it was trained on."""
    import json
    import shutil

    import torch
    import yaml
    from PIL import Image
    from safetensors.torch import save_file

    from stepdistill.config import apply_overrides, to_dict

    (tmp / "old_export").mkdir()  # an export from before student.json
    (tmp / "old_export" / "model_index.json").write_text(
        json.dumps({"_class_name": ["stepdistill_pipeline", "StepDistillClassConditionalPipeline"]}))
    for name in ("a", "b"):  # class sub-folders, which a text-to-image run refuses
        (tmp / "classes" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp / "classes" / name / "x.png")
    shutil.copytree(teacher, tmp / "own_teacher")  # a teacher folder with no record of its training data
    (tmp / "own_teacher" / "train_config.yaml").unlink()
    (tmp / "lora").mkdir()
    save_file({"unet.conv.lora_A.weight": torch.zeros(4, 4)}, str(tmp / "lora" / "pytorch_lora_weights.safetensors"))
    (tmp / "cut_index").mkdir()
    (tmp / "cut_index" / "model_index.json").write_text('{"_class_name": ["stepdistill_pipeline", "StepDist')
    dmd2 = apply_overrides(RECIPES["dmd2"].config_class()(), [f"model.teacher={teacher}", *SAFE])
    config = yaml.safe_dump(to_dict(dmd2), sort_keys=False)
    lines = config.splitlines(keepends=True)
    for name, text in (("cut_student", config), ("cut_config", "model:\n  teacher: [unclosed\n"),
                       ("short_config", "".join(lines[: len(lines) // 2])), ("no_weights", config)):
        checkpoint = tmp / name / CKPT
        checkpoint.mkdir(parents=True)
        (checkpoint / "step.json").write_text('{"step": 1}')
        (tmp / name / "config.yaml").write_text(text)
        if name != "no_weights":
            save_file({"w": torch.zeros(64)}, str(checkpoint / "student.safetensors"))
    cut = tmp / "cut_student" / CKPT / "student.safetensors"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])


def corrupt_images(tmp: Path) -> None:
    """Image folders with a cut JPEG, a cut PNG, and nothing but a file that is no WebP."""
    import numpy as np
    from PIL import Image

    def noise(seed):
        return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8))

    for name, fmt, ext in (("bad_jpeg", "JPEG", "jpg"), ("bad_png", "PNG", "png")):
        (tmp / name).mkdir()
        noise(0).save(tmp / name / "good.png")
        buf = io.BytesIO()
        noise(1).save(buf, fmt)
        data = buf.getvalue()
        (tmp / name / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    (tmp / "bad_webp").mkdir()
    (tmp / "bad_webp" / "noise.webp").write_bytes(b"not a webp file " * 16)


def paired_sources(tmp: Path) -> None:
    """A captioned folder (metadata.jsonl), one with a cut PNG, and two webdataset shards, the second empty."""
    import json
    import tarfile

    from PIL import Image

    for name in ("captioned", "captioned_cut"):
        (tmp / name).mkdir()
        for i in range(2):
            Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp / name / f"{i}.png")
        (tmp / name / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{i}.png", "text": f"red {i}"})
                                                           + "\n" for i in range(2)))
    cut = tmp / "captioned_cut" / "1.png"
    cut.write_bytes(cut.read_bytes()[:40])
    (tmp / "shards").mkdir()
    with tarfile.open(tmp / "shards" / "part-000.tar", "w") as tar:
        for name in ("0.png", "0.txt"):
            tar.add(tmp / "captioned" / ("0.png" if name.endswith("png") else "metadata.jsonl"), arcname=name)
    with tarfile.open(tmp / "shards" / "part-001.tar", "w"):
        pass


def run_case(case: Case, paths: dict[str, str], out: Path) -> tuple[int, str]:
    """(exit status, the last line printed to stderr) of one case."""
    argv = [a.format(**paths) for a in case.argv]
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            if case.target == "evaluate":
                from stepdistill.evaluation.cli import main as evaluate

                evaluate([*argv, "--outdir", str(out)])
            else:
                module, config = RECIPES[case.target].module(), RECIPES[case.target].config_class()
                from stepdistill.training import cli

                cli(module, config, [f"model.teacher={paths['teacher']}", f"train.output_dir={out}", *SAFE, *argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=stderr)
    lines = [line for line in stderr.getvalue().strip().splitlines() if line.strip()]
    return code, lines[-1] if lines else ""


def main(argv: list[str] | None = None) -> None:
    import argparse

    from stepdistill.io import atomic_write_text

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)

    rows = ["| # | target | arguments | exit | message |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = prepare(Path(tmp))
        for i, case in enumerate(CASES, 1):
            code, message = run_case(case, paths, Path(tmp) / f"out{i}")
            args = " ".join(case.argv).replace(tmp, "TMP").replace("|", "\\|")
            rows.append(f"| {i} | {case.target} | `{args}` | {code} | {message.replace(tmp, 'TMP').replace('|', '/')} |")
            print(rows[-1], flush=True)
    atomic_write_text(RESULTS, "# Bad inputs and their messages\n\n"
                      "`python tools/bad_inputs.py`; each case is checked by `tests/test_bad_inputs.py`.\n\n"
                      + "\n".join(rows) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
