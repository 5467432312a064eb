"""What every recipe's run starts from, and the optimisation helpers the recipes share.

`Setup.build` makes the accelerator, checks the resume point, seeds, loads the teacher and reads its
conditioning, sample space and real data; every error is raised there, before the first training step,
so bad input costs no compute. A recipe's `Run` holds a `Setup` beside its own networks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, get_args

import torch
from accelerate import Accelerator
from accelerate.utils import TorchDynamoPlugin, set_seed
from diffusers.training_utils import EMAModel

from .. import run_lock, sharding
from ..checkpointing import CACHE_DIR, checkpoint_info, claim_output_dir, load_checkpoint, resolve_resume
from ..conditioning import ClassConditioner, LRConditioner, TextConditioner, Unconditional
from ..prompt_encoders import prompt_encoder
from ..data import ImageFolder, IndexLabelled, load_prompts
from ..data.paired import PairedImages, open_source
from ..data.precomputed import EmbeddingStore, PrecomputedLatents, captions_of, check_made_for, read_index
from ..data.stream import RealStream
from ..data.streamed import OrderedStream, StreamedSource
from ..data.embedded import embedded_dataset
from ..degradations import Degradation
from ..distributed import compute_dtype, enable_tf32, make_accelerator
from ..fingerprints import run_identity, weights_digest
from ..io import atomic_write_text
from ..ops import set_fused_losses
from ..latents import LatentSpace, PixelSpace
from ..families import family_of_network
from ..teachers import Teacher, load_teacher
from ..schedules import RectifiedFlow, flow_shift
from .draw import Draw
from .ema import ShardedEMA
from .horizon import Horizon, lr_factor
from .meters import name_optimizer, record_grad_norm
from .resume import CONFIG_FILE, HORIZON_KEYS, apply_settings, record_resume, remember_settings
from .sections import DataConfig, LRSchedule, TrainConfig


COMPILE_BACKEND = "inductor"  # torch.compile's backend for train.compile


@dataclass(kw_only=True)
class Setup:
    """The accelerator, the teacher, how conditions and samples look, real data, where to resume."""

    accelerator: Accelerator
    teacher: Teacher
    conditioner: Any  # ClassConditioner | TextConditioner | LRConditioner | Unconditional
    space: Any  # PixelSpace | LatentSpace
    shape: tuple[int, ...]  # one sample in the space the networks denoise
    dataset: Optional[Any]  # real images (and labels), or None
    real: Optional[RealStream] = None  # the dataset's batches for the training draw (`Draw.real`)
    resume_from: Optional[Path]
    output_dir: Path
    identity: dict[str, str]  # what produced the teacher's outputs: teacher and data (`fingerprints.run_identity`)
    horizon: Horizon  # the step at which training ends and decaying rates reach zero (fitted to the time limit)
    labelled_real: bool = False  # real images carry class labels (read once: an item may decode an image)
    cache_suffix: str = ""  # a view of the setup restricted to part of the conditions caches its own outputs

    @property
    def schedule(self):
        return self.teacher.schedule

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def cache(self, name: str) -> Path:
        """Where this run caches a teacher output `name` (ODE pairs, trajectories): OUTPUT/cache/NAME.safetensors,
        written with `identity` and the solver settings, reused only when they match, removed by an overwrite."""
        return self.output_dir / CACHE_DIR / f"{name}{self.cache_suffix}.safetensors"

    def shard(self, *roles: torch.nn.Module | None) -> None:
        """Shard the trained roles in place where the launcher asked for FSDP on CPU processes (`sharding.shard`);
        call before their optimisers and EMA are made."""
        sharding.shard(self.accelerator, *roles)

    def prepare(self, *objects):
        """`accelerator.prepare` for the roles, optimisers and schedulers (`sharding.prepare`: sharded roles and
        their optimisers are checkpointed whole, not wrapped in DDP)."""
        return sharding.prepare(self.accelerator, *objects)

    def ema_of(self, module: torch.nn.Module, decay: float | None) -> EMAModel | None:
        """`make_ema` over a prepared role's trainable weights as they are after `prepare` (accelerate's FSDP replaces
        them there; an EMA of the weights before would never move)."""
        return make_ema(trainable_params(self.unwrap(module)), decay, self.accelerator)

    def unwrap(self, module: torch.nn.Module | None) -> torch.nn.Module | None:
        """A prepared module without its DDP wrapper (and `torch.compile`'s): for passes whose weights take no
        gradient (DDP must not wait for them), for sampling and for its weights' own names."""
        return None if module is None else self.accelerator.unwrap_model(module, keep_torch_compile=False)

    @classmethod
    def build(cls, *, train: TrainConfig, teacher: str, resume: str | None, data: DataConfig,
              need_images: bool = False) -> "Setup":
        """`need_images`: the recipe trains on real images (a GAN, say), which then must exist."""
        # train.compile: accelerate compiles every prepared (trained) role, with fixed shapes
        accelerator = make_accelerator(mixed_precision=train.mixed_precision, project_dir=train.output_dir,
                                       dynamo_plugin=TorchDynamoPlugin(backend=COMPILE_BACKEND if train.compile else "no",
                                                                       dynamic=False if train.compile else None),
                                       log_with=None if train.report_to == "none" else train.report_to)
        check_train(train, accelerator.num_processes)
        set_fused_losses(train.fused_losses)
        resume_from = resolve_resume(resume, train.output_dir)
        take_run_lock(accelerator, train.output_dir)  # before this run writes anything there
        claim_output_dir(train.output_dir, resuming=resume is not None, overwrite=train.overwrite,
                         is_main=accelerator.is_main_process)
        accelerator.wait_for_everyone()
        set_seed(train.seed)
        dtype = compute_dtype(accelerator.mixed_precision)
        accelerator.print(precision_line(accelerator.mixed_precision, dtype, enable_tf32(accelerator.device)))
        loaded = load_teacher(teacher, device=accelerator.device, dtype=dtype)
        conditioner, space, dataset = setup_data(data, loaded, accelerator.device, need_images=need_images,
                                                 dtype=dtype)
        return cls(accelerator=accelerator, teacher=loaded, conditioner=conditioner, space=space,
                   shape=sample_shape(loaded, conditioner, space),
                   dataset=None if isinstance(dataset, StreamedSource) else dataset, resume_from=resume_from,
                   real=real_stream(dataset, data, accelerator, conditioner),
                   output_dir=Path(train.output_dir), identity=run_identity(loaded, data),
                   horizon=Horizon(train.max_steps),
                   labelled_real=(dataset.want is not None if isinstance(dataset, StreamedSource)
                                  else dataset is not None and "class_labels" in dataset[0]))


def real_stream(dataset, data: DataConfig, accelerator, conditioner) -> RealStream | OrderedStream | None:
    """The training draw's real images: keyed draws from an indexed dataset, or a streamed source's rows in order
    (checkpointed with the run: where it resumes)."""
    if dataset is None:
        return None
    pin = accelerator.device.type == "cuda"
    if not isinstance(dataset, StreamedSource):
        return RealStream(dataset, workers=data.loader_workers, pin_memory=pin)
    stream = OrderedStream(dataset, dataset.resolution, channels=data.image_channels, center_crop=data.center_crop,
                           random_flip=data.random_flip, skip_corrupt=data.skip_corrupt,
                           workers=data.loader_workers, pin_memory=pin,
                           label=getattr(conditioner, "streamed_labels", None),
                           num_classes=getattr(conditioner, "num_classes", None))
    accelerator.register_for_checkpointing(stream)
    return stream


def precision_line(mixed_precision: str, dtype: torch.dtype, tf32: bool) -> str:
    """The precision a run trains in, printed at setup."""
    if mixed_precision == "no":
        held = "float32 throughout"
    else:
        vae = " (the VAE in float32: fp16 overflows it)" if dtype == torch.float16 else ""
        held = (f"{mixed_precision} autocast; the frozen networks (teacher, text encoders, VAE{vae}) held in "
                f"{mixed_precision}; trained roles keep float32 master weights")
    return f"precision: {held}; TF32 {'on' if tf32 else 'off (no GPU that has it)'}"


def take_run_lock(accelerator: Accelerator, output_dir: str | Path) -> None:
    """The main process takes the folder's run lock (`run_lock`); every process raises its refusal."""
    from accelerate.utils import broadcast_object_list

    refusal = [None]
    if accelerator.is_main_process:
        try:
            run_lock.acquire(output_dir)
        except run_lock.FolderInUse as e:
            refusal = [str(e)]
    if accelerator.num_processes > 1:
        refusal = broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise run_lock.FolderInUse(refusal[0])


def check_train(train: TrainConfig, processes: int) -> None:
    """The train section's numbers, checked before anything is built."""
    if train.batch_size < 1 or train.batch_size % processes:
        raise ValueError(f"train.batch_size={train.batch_size} must be positive and divisible by "
                         f"{processes} process(es)")
    local = train.batch_size // processes
    if train.micro_batch_size is not None and not (1 <= train.micro_batch_size <= local
                                                   and local % train.micro_batch_size == 0):
        fits = [m for m in range(1, local + 1) if local % m == 0]
        raise ValueError(f"train.micro_batch_size={train.micro_batch_size} must divide each process's share of "
                         f"train.batch_size={train.batch_size} ({local} on {processes} process(es)): one of "
                         f"{', '.join(map(str, fits[-8:]))} (null: {local}, no accumulation)")
    if train.keep_checkpoints < 0:
        raise ValueError(f"train.keep_checkpoints={train.keep_checkpoints} must be >= 0 (0 keeps every checkpoint)")
    for key in ("max_steps", "log_every", "sample_every", "checkpoint_every", "max_nonfinite_steps"):
        if getattr(train, key) < 1:
            raise ValueError(f"train.{key}={getattr(train, key)} must be >= 1")
    if train.time_limit_minutes is not None and train.time_limit_minutes < 0:
        raise ValueError(f"train.time_limit_minutes={train.time_limit_minutes} must be >= 0 (null: no limit)")


def one_step_timesteps(timesteps, schedule) -> torch.Tensor:
    """`model.generator_timesteps` of a one-step generator: one time in (0, t_max], as float64."""
    ts = torch.tensor(timesteps, dtype=torch.float64)
    if len(ts) != 1 or not 0 < float(ts[0]) <= schedule.t_max:
        raise ValueError(f"model.generator_timesteps must be one time in (0, {schedule.t_max}] "
                         f"(a one-step generator); got {ts.tolist()}")
    return ts


def check_optim(optim, max_steps: int, *, steps_per_update: int = 1) -> None:
    """An optim section's values, each checked with its key and valid range before anything is built:
    learning rates (`lr_*`) > 0, betas in [0, 1), eps > 0, weight_decay >= 0, grad_clip > 0 (or null),
    warmup_steps >= 0 and, with a decaying schedule, shorter than the run (`steps_per_update`: training
    steps per update of the slowest optimiser, e.g. DMD2's update_ratio)."""
    for key, value in vars(optim).items():
        if key.startswith("lr_") and key != "lr_schedule" and not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"optim.{key}={value} must be > 0")
    betas = getattr(optim, "betas", (0.0, 0.0))
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"optim.betas={list(betas)} must be two values in [0, 1)")
    if getattr(optim, "eps", 1.0) <= 0:
        raise ValueError(f"optim.eps={optim.eps} must be > 0")
    if getattr(optim, "weight_decay", 0.0) < 0:
        raise ValueError(f"optim.weight_decay={optim.weight_decay} must be >= 0")
    clip = getattr(optim, "grad_clip", None)
    if clip is not None and clip <= 0:
        raise ValueError(f"optim.grad_clip={clip} must be > 0 (or null: no clipping)")
    warmup = getattr(optim, "warmup_steps", 0)
    if warmup < 0:
        raise ValueError(f"optim.warmup_steps={warmup} must be >= 0")
    schedule = getattr(optim, "lr_schedule", "constant")
    if schedule != "constant" and -(-warmup // steps_per_update) >= -(-max_steps // steps_per_update):
        raise ValueError(f"optim.warmup_steps={warmup} must be shorter than train.max_steps={max_steps} when the "
                         f"learning rates decay (optim.lr_schedule={schedule}): lower the warm-up, raise max_steps, "
                         "or set optim.lr_schedule=constant")


def check_step_range(loss) -> None:
    """`loss.min_step` and `loss.max_step`, fractions of the teacher's level table (`time_sampling.DiscreteRange`):
    0 <= min_step < max_step <= 1, checked before anything is built."""
    lo, hi = loss.min_step, loss.max_step
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"loss.min_step={lo} and loss.max_step={hi} must satisfy 0 <= min_step < max_step <= 1 "
                         "(fractions of the teacher's noise-level table)")


def sample_shape(teacher: Teacher, conditioner, space) -> tuple[int, ...]:
    """One sample's shape in the denoised space: the network's input channels less those the conditioner
    concatenates (a low-resolution image for super-resolution), at the network's sample size."""
    if isinstance(space, LatentSpace):  # (latent channels, resolution / VAE factor, same)
        return space.shape
    c = teacher.net.config
    size = c.sample_size if isinstance(c.sample_size, int) else tuple(c.sample_size)
    channels = c.in_channels - getattr(conditioner, "extra_channels", 0)
    if channels < 1:
        raise ValueError(f"the teacher has {c.in_channels} input channels, fewer than its conditioner's "
                         f"{conditioner.extra_channels}")
    return (channels, *((size, size) if isinstance(size, int) else size))


def setup_data(data: DataConfig, teacher: Teacher, device, *, need_images: bool, dtype: torch.dtype = torch.float32):
    """(conditioner, sample space, real-image dataset or None) for the teacher's kind of conditioning:

    - text-to-image teachers: the prompts of `data.prompts`, else a paired source's captions (embeddings encoded when
      drawn and cached, `data.embedding_cache_mib`), the VAE's latents; a paired source's images carry their own
      captions' labels (`TextConditioner.captions`);
    - class-conditional pixel teachers (class embeddings): class labels (class sub-folders, `data.label_column`);
    - image-conditioned teachers (`data.condition_scale` > 0, super-resolution): each real image's degraded
      low-resolution copy, concatenated to the network input (label i: real image i);
    - unconditional teachers: no condition.
    Real images come from `data.images`, `data.dataset` or `data.shards` (`data.paired`), or the digits for the shipped
    digits teacher; `need_images` (a GAN, an image condition) makes them mandatory. `dtype`: the text encoders' and
    the VAE's (mixed precision's compute dtype; the VAE stays float32 under fp16, which overflows it).
    """
    net_cfg = teacher.net.config
    text = data.prompts is not None or family_of_network(teacher.net).prompt_encoder is not None
    # a super-resolution teacher's folder records its scale (recipes/train_teacher.py); data.condition_scale wins
    condition_scale = data.condition_scale or int(teacher.index.get("sr_scale") or 0)
    if not data.embedding_cache_mib > 0:
        raise ValueError(f"data.embedding_cache_mib={data.embedding_cache_mib} must be > 0 (MiB of encoded prompts "
                         "each process keeps)")
    if not 0.0 <= data.prompt_dropout < 1.0:
        raise ValueError(f"data.prompt_dropout={data.prompt_dropout} must lie in [0, 1)")
    if data.loader_workers < 0:
        raise ValueError(f"data.loader_workers={data.loader_workers} must be >= 0 (0: load in the training process)")
    if not text and data.resolution is not None:
        raise ValueError(f"data.resolution={data.resolution} applies to text-to-image teachers; "
                         "a pixel teacher's resolution is its network's")
    if data.embedded_guidance is not None and not (text and teacher.net.config.get("guidance_embeds")):
        raise ValueError(f"data.embedded_guidance={data.embedded_guidance} applies to text-to-image teachers that "
                         "embed the guidance scale (Flux-dev); this teacher does not")
    if text and data.label_column is not None:
        raise ValueError(f"data.label_column={data.label_column} applies to class-conditional teachers; a "
                         "text-to-image teacher's real images are conditioned on their captions (data.caption_column)")
    prompts = load_prompts(data.prompts) if data.prompts is not None else None  # the cheapest thing to get wrong
    want = "captions" if text else "labels" if data.label_column else None
    if data.streaming:
        check_streaming(data, text=text, condition_scale=condition_scale)
        source = StreamedSource(data.dataset, want=want, split=data.split, image_column=data.image_column,
                                caption_column=data.caption_column, label_column=data.label_column,
                                shuffle_buffer=data.shuffle_buffer)
    else:  # the source's index (captions, labels) before anything large is loaded; its images are decoded below
        source = open_source(data, want=want)
    captions = getattr(source, "captions", None)
    precomputed = None
    if data.precomputed is not None:  # latents and embeddings written ahead (`stepdistill.precompute`)
        if not text:
            raise ValueError(f"data.precomputed={data.precomputed}: precomputed latents serve text-to-image teachers")
        precomputed = read_index(data.precomputed)
        captions = captions_of(data.precomputed)
    if text:
        if prompts is None and not captions:
            raise ValueError("a text-to-image teacher needs prompts: data.prompts (a prompt file) or a captioned "
                             "data source (data.dataset, data.shards, or data.images with metadata.jsonl)")
        vae = teacher.load_component("vae", dtype=torch.float32 if dtype == torch.float16 else dtype).to(device)
        resolution = text_to_image_resolution(data, teacher, vae)
        space = LatentSpace(vae, resolution)
        check_latent_channels(teacher, space)
        encoder = prompt_encoder(teacher, (resolution, resolution), device=device, guidance=data.embedded_guidance,
                                 dtype=dtype)
        # without a prompt file the generator is trained on the captions (labels 0..N-1 for both)
        conditioner = TextConditioner(prompts or captions, encoder, device=device, cache_mib=data.embedding_cache_mib,
                                      captions=captions if prompts is not None else None,
                                      store=precomputed and EmbeddingStore(data.precomputed, precomputed))
        teacher.schedule = at_resolution(teacher, space.shape)
    elif condition_scale:  # the condition is built from the real images below
        conditioner, space, resolution = None, PixelSpace(), net_cfg.sample_size
        need_images = True
    elif net_cfg.get("num_class_embeds"):
        conditioner = ClassConditioner.for_embeddings(net_cfg.num_class_embeds)
        space, resolution = PixelSpace(), net_cfg.sample_size
    else:
        conditioner, space, resolution = Unconditional(), PixelSpace(), net_cfg.sample_size
    degradation = None
    if conditioner is None:
        extra = net_cfg.in_channels - net_cfg.get("out_channels", net_cfg.in_channels)
        if extra < 1:
            raise ValueError(f"data.condition_scale={condition_scale} needs a teacher with more input than "
                             f"output channels (the condition is concatenated); this one has {net_cfg.in_channels} "
                             f"in and {net_cfg.get('out_channels')} out")
        if resolution % condition_scale:
            raise ValueError(f"data.condition_scale={condition_scale} must divide the teacher's resolution "
                             f"{resolution}")
        degradation = Degradation(condition_scale, data.degradation_blur, data.degradation_noise,
                                  data.degradation_jpeg)
    out_channels = net_cfg.get("out_channels") or net_cfg.in_channels
    dataset = None
    crops = dict(channels=data.image_channels, center_crop=data.center_crop, random_flip=data.random_flip,
                 skip_corrupt=data.skip_corrupt)
    if precomputed is not None:
        check_made_for(precomputed, Path(data.precomputed),
                       {"teacher_weights": weights_digest(teacher.net), "vae_weights": weights_digest(space.vae),
                        "resolution": str(resolution)})
        if precomputed.get("latent_shards"):
            dataset = PrecomputedLatents(data.precomputed, precomputed)
    elif isinstance(source, StreamedSource):  # its rows are decoded as they arrive (`real_stream`)
        source.resolution, dataset = resolution, source
    elif source is not None:
        dataset = PairedImages(source, resolution, **crops)
        if not text and getattr(conditioner, "num_classes", None) and source.labels is not None:
            check_labels(source, conditioner.num_classes)
    elif data.images is not None:
        dataset = ImageFolder(data.images, resolution, **crops)
        if text and dataset.labels is not None:  # they would be read as prompt numbers
            raise ValueError(f"data.images={data.images} has class sub-folders ({', '.join(dataset.classes[:3])}"
                             f"{', ...' if len(dataset.classes) > 3 else ''}); a text-to-image run draws its "
                             "prompts from data.prompts and its real images unlabelled: put the images directly "
                             "in one folder, or caption them in a metadata.jsonl")
    elif need_images:  # the embedded set the teacher was trained on (the digits split it saw; the SR patches)
        dataset = embedded_dataset(teacher.root, resolution, degradation, data)
    if text and dataset is not None and source is not dataset:  # caption i is label caption_offset + i (after the prompt file's prompts)
        dataset.caption_offset = conditioner.caption_offset if conditioner.captions else 0
    if need_images and dataset is None:
        raise ValueError("this configuration needs real images: set data.images (an image folder), data.dataset or "
                         "data.shards")
    if degradation is not None:  # each real image is conditioned on its own degraded copy
        dataset = IndexLabelled(dataset)
        conditioner = LRConditioner(dataset, degradation, net_cfg.in_channels - out_channels)
    return conditioner, space, dataset


def check_streaming(data: DataConfig, *, text: bool, condition_scale: int) -> None:
    """What a streamed dataset cannot serve, before anything is read."""
    if data.dataset is None:
        raise ValueError("data.streaming=true streams data.dataset (a Hub name or a folder); set data.dataset, or "
                         "leave data.streaming false for data.images / data.shards")
    others = [k for k in ("images", "shards", "precomputed") if getattr(data, k) is not None]
    if others:
        raise ValueError(f"real images come from one source; data.streaming=true streams data.dataset, so unset "
                         f"{', '.join('data.' + k for k in others)}")
    if condition_scale:
        raise ValueError("data.streaming=true: super-resolution runs condition each image on its own degraded copy, "
                         "looked up by index; stream-free data.images or data.dataset serve them")
    if text and data.prompts is None:
        raise ValueError("data.streaming=true: a streamed dataset's captions are not known ahead, so the generator's "
                         "prompts come from data.prompts (a prompt file); set it")
    if data.shuffle_buffer < 0:
        raise ValueError(f"data.shuffle_buffer={data.shuffle_buffer} must be >= 0 (0: the stream's own order)")


def check_labels(source, num_classes: int) -> None:
    """A labelled source's class labels against the teacher's class count."""
    top = max(source.labels)
    if top >= num_classes:
        at = source.labels.index(top)
        raise ValueError(f"{source.where}: {source.describe(at)} has class label {top}, but the teacher has "
                         f"{num_classes} classes (0..{num_classes - 1})")


def text_to_image_resolution(data: DataConfig, teacher: Teacher, vae) -> int:
    """`data.resolution`, else the teacher's default: its sample size times the VAE's factor (Flux's
    transformer has none: FluxPipeline's 1024). Checked against the latent grid the denoiser needs."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    family = family_of_network(teacher.net)
    resolution = family.resolution(factor, teacher.net.config) if data.resolution is None else data.resolution
    multiple = family.latent_multiple(factor, teacher.net.config)
    if resolution < multiple or resolution % multiple:
        raise ValueError(f"data.resolution={resolution} must be a positive multiple of {multiple} for this teacher "
                         f"(VAE factor {factor}{', 2x2 latent packing' if family.packed else ''})")
    return resolution


def check_latent_channels(teacher: Teacher, space: LatentSpace) -> None:
    c = space.shape[0]
    if family_of_network(teacher.net).latent_channels(teacher.net.config) != c:
        raise ValueError(f"the teacher's {teacher.component} takes {teacher.net.config.in_channels} input channels but its "
                         f"VAE has {c} latent channels")


def at_resolution(teacher: Teacher, shape: tuple[int, ...]):
    """The teacher's schedule at this sample shape: a FlowMatch scheduler with `use_dynamic_shifting` (Flux)
    shifts by an amount that depends on the image's token count (2x2 latent patches)."""
    config = teacher.scheduler_config
    if not config.get("use_dynamic_shifting"):
        return teacher.schedule
    tokens = (shape[-2] // 2) * (shape[-1] // 2)
    return RectifiedFlow(shift=flow_shift(config, tokens), num_train_timesteps=int(config.get("num_train_timesteps", 1000)))


def restore(accelerator: Accelerator, resume_from: Path | None, *, output_dir: str | Path, config,
            horizon: Horizon | None = None, changed: dict | None = None) -> int:
    """Restore a checkpoint (returns its step, else 0), then this run's optimiser settings over the
    checkpoint's, and its `horizon`, moved from here when max steps or the time limit `changed` (`resume.check_resume`:
decaying rates then decay on from the value they reached, `horizon`).
    A fresh run writes its config.yaml; a resumed one appends the resume to it."""
    from ..config import save_config

    changed = changed or {}
    start_step = load_checkpoint(accelerator, resume_from) if resume_from else 0
    if resume_from is not None:
        apply_settings(accelerator)
        if horizon is not None:  # moved to the new max_steps / time limit from here, or kept
            horizon.restore(checkpoint_info(resume_from).get("horizon"), done=start_step,
                            refit=any(k in changed for k in HORIZON_KEYS))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        if resume_from is None:
            save_config(config, out / CONFIG_FILE)
        else:
            record_resume(out / CONFIG_FILE, config, step=start_step, checkpoint=resume_from, changed=changed)
    if resume_from is not None:  # the dead run's steps after the checkpoint go; the resume is marked
        log = out / f"log_rank{accelerator.process_index}.jsonl"
        rows = [line for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
        kept = [r for r in rows if json.loads(r).get("step", -1) < start_step and "resume" not in json.loads(r)]
        kept.append(json.dumps({"resume": str(resume_from), "from_step": start_step,
                                "changed": sorted(k for k in changed if k != "resume")}))
        atomic_write_text(log, "\n".join(kept) + "\n")
    return start_step


def trainable_params(*modules: torch.nn.Module | None) -> list[torch.nn.Parameter]:
    """The parameters of `modules` that train (requires_grad), in order; None entries are skipped."""
    return [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]


def make_optimizer(params: Iterable[torch.nn.Parameter], *, lr: float, betas: tuple[float, float],
                   weight_decay: float = 0.0, warmup_steps: int = 0, eps: float = 1e-8,
                   schedule: LRSchedule = "constant", total_steps: int | Horizon | None = None,
                   steps_per_update: int = 1, name: str = "student"):
    """AdamW after a linear warm-up over `warmup_steps` (this optimiser's own steps), then a constant
    learning rate or a linear / cosine decay to zero at `total_steps`: a number of this optimiser's steps,
    or the run's `Horizon` (training steps; the optimiser steps once every `steps_per_update` of them), which
    the loop may fit to the time limit. `name`: the role it trains, which its logged rate and gradient norm are
    named after (`meters`: `lr_<name>`, `grad_norm_<name>`)."""
    if schedule not in get_args(LRSchedule):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {get_args(LRSchedule)}")
    own = ((lambda: -(-total_steps.total // steps_per_update)) if isinstance(total_steps, Horizon)
           else (lambda: total_steps))
    anchors = ((lambda: [[-(-at // steps_per_update), -(-before // steps_per_update)]
                         for at, before in total_steps.anchors]) if isinstance(total_steps, Horizon) else list)
    if schedule != "constant" and (own() is None or own() <= warmup_steps):
        raise ValueError(f"a {schedule} decay needs total_steps > warmup_steps={warmup_steps}; got {own()}")
    opt = torch.optim.AdamW(list(params), lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(schedule, warmup_steps=warmup_steps, total_steps=own,
                                                                  anchors=anchors))
    remember_settings(opt, sched, lr=lr, betas=tuple(betas), weight_decay=weight_decay, eps=eps)  # for a resume
    name_optimizer(opt, name)
    return opt, sched


def make_ema(params: list[torch.nn.Parameter], decay: float | None, accelerator: Accelerator) -> EMAModel | None:
    """diffusers' `EMAModel` of the generator, registered so checkpoints carry it (None: no EMA)."""
    if not decay:
        return None
    params = list(params)
    # sharded weights (FSDP over CPU processes, `sharding`): shadows sharded alike, gathered whole in checkpoints
    ema = (ShardedEMA if any(sharding.is_sharded_tensor(p) for p in params) else EMAModel)(params, decay=decay)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    return ema


def accumulate(draw: Draw, loss_fn: Callable[..., tuple], *batch: torch.Tensor, weight: float = 1.0
               ) -> tuple[dict[str, float], tuple[torch.Tensor, ...]]:
    """A phase's losses over the step's micro-batches (`train.micro_batch_size`; one without accumulation):
    `loss_fn(view, *rows) -> (loss, logs, *aux)` runs on each micro-batch's view of `draw` (the same draws, its own
    rows) and its rows of the local-batch tensors `batch`; the backward of `weight * loss / passes` accumulates the
    gradients, for an `update` after. Returns the logs averaged over the micro-batches and each aux tensor (e.g. the
    phase's detached samples, for the next phase) with its micro-batches joined."""
    logs: dict[str, float] = {}
    aux: list[list[torch.Tensor]] = []
    for view in draw.micro_views():
        loss, logged, *extra = loss_fn(view, *(view.slice(t) for t in batch))
        draw.acc.backward(loss * (weight / draw.passes))
        for key, value in logged.items():
            logs[key] = logs.get(key, 0.0) + float(value) / draw.passes
        aux = [parts + [e] for parts, e in zip(aux, extra)] if aux else [[e] for e in extra]
    return logs, tuple(torch.cat(parts) for parts in aux)


def optimizer_step(accelerator: Accelerator, loss: torch.Tensor, params: list[torch.nn.Parameter], opt, sched, *,
                   grad_clip: float | None, nan_to_num: bool = False) -> None:
    """Backward, then `update`: one optimiser step on one batch (no accumulation)."""
    accelerator.backward(loss)
    update(accelerator, params, opt, sched, grad_clip=grad_clip, nan_to_num=nan_to_num)


def single_network_step(draw: Draw, loss_fn: Callable[[Draw], tuple], accelerator: Accelerator,
                        module: torch.nn.Module, opt, sched, *, grad_clip: float | None, ema=None) -> dict[str, float]:
    """The whole step of a recipe that trains one network on one loss (ECT, YONOS-SR, BOOT): `loss_fn(view)` over the
    step's micro-batches (`accumulate`), one `update` of `module`'s trainable weights, then its EMA."""
    logs, _ = accumulate(draw, loss_fn)
    params = trainable_params(module)
    update(accelerator, params, opt, sched, grad_clip=grad_clip)
    if ema is not None:
        ema.step(params)
    return logs


def update(accelerator: Accelerator, params: list[torch.nn.Parameter], opt, sched, *, grad_clip: float | None,
           nan_to_num: bool = False) -> None:
    """The optimiser step on the accumulated gradients: optionally zero NaN/inf gradients (SiD's `nan_to_num` on
    every gradient), clip, step the optimiser and its schedule, clear the gradients."""
    if nan_to_num:
        for p in params:
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0.0, posinf=1e5, neginf=-1e5)
    if grad_clip is not None:
        norm = accelerator.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    record_grad_norm(opt, norm)  # logged as grad_norm_<name> (before clipping)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
