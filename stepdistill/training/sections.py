"""Config sections shared by the distillation recipes; each recipe sets its own defaults in them
(e.g. `TrainConfig(output_dir="outputs/sid_digits")`) and adds a `model` / `loss` / `optim` section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ..samplers import SamplerName

# The embedded benchmarks' (digits, SR patches) time limit: their default runs fit 15 minutes on 2 CPU cores.
EMBEDDED_MINUTES = 11.5

# Learning rate after the warm-up: constant, or decaying to zero at the optimiser's last step.
LRSchedule = Literal["constant", "linear", "cosine"]


@dataclass
class TrainConfig:
    max_steps: int = 2400
    # The GLOBAL batch of one training step, over all processes and accumulation passes (the papers' batch sizes
    # are global: DMD2 SD1.5 2048, SiD 512). Each step draws it from (seed, step), so any process count and any
    # accumulation train the same model.
    batch_size: int = 64
    # Samples per process per forward pass; null: batch_size / processes. Smaller: the step accumulates gradients
    # over batch_size / (processes x micro_batch_size) passes (which must be a whole number).
    micro_batch_size: Optional[int] = None
    # Autocast for the passes, and the dtype frozen networks (teacher, VAE, text encoders) are held in; trained
    # roles keep fp32 master weights. "auto": the launcher's `--mixed_precision` if it gave one, else bf16 where the
    # hardware runs it natively (distributed.native_bf16), else fp32. TF32 matmuls are on where the GPU has them.
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "no"
    # The fused Triton losses (DMD, VSD, SiD, pseudo-Huber) on CUDA: "auto" checks each against its reference on
    # its first call (value and gradients) and falls back to the reference, with one warning, on a compile error or
    # a mismatch; "on" always fused, "off" never. The backend that ran is recorded in the results and model card.
    fused_losses: Literal["auto", "on", "off"] = "auto"
    # torch.compile the trained roles (accelerate's dynamo backend, inductor): fixed shapes, so every step's
    # passes compile once; the first steps are slower.
    compile: bool = False

    def passes(self, processes: int) -> int:
        """Micro-batches (gradient-accumulation passes) per process and step."""
        local = self.batch_size // processes
        return 1 if self.micro_batch_size is None else max(1, local // self.micro_batch_size)
    seed: int = 0
    ema_decay: Optional[float] = 0.99
    log_every: int = 50
    sample_every: int = 500
    # The sample grid's columns (8 seeded samples each), written to OUTPUT/samples and logged to the trackers as an
    # image every sample_every steps: prompts (text-to-image) or class labels; empty: the first 10 prompts or classes.
    validation_prompts: tuple[str, ...] = ()
    validation_labels: tuple[int, ...] = ()
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # the newest N (0: all, e.g. to score a run's checkpoints afterwards)
    # Stop (then still evaluate and export) after this long, counted from the start of the process; learning
    # rates that decay are fitted to it (`horizon`). None: no limit, train.max_steps. The embedded benchmarks'
    # defaults carry their CPU budget (EMBEDDED_MINUTES); a resumed run may change it (null: no limit).
    time_limit_minutes: Optional[float] = None
    output_dir: str = "outputs/run"
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    # The trackers' project (TensorBoard: OUTPUT/<project>/; W&B: the project) and run name (W&B's); null: the
    # recipe's name, and the output folder's name.
    project: Optional[str] = None
    run_name: Optional[str] = None
    # Divergence guard: this many consecutive steps with a non-finite loss stop the run (non-zero exit),
    # keeping the last good checkpoint; a checkpoint or export of non-finite weights is never written.
    max_nonfinite_steps: int = 3
    # Start a new run in a folder that holds another run's checkpoints (they are deleted); without it,
    # such a folder is refused (continue it with `resume=latest`).
    overwrite: bool = False


@dataclass
class DataConfig:
    prompts: Optional[str] = None  # text-to-image: a prompt file (.txt/.csv/.json/.jsonl)
    prompt_dropout: float = 0.1  # condition dropout where a recipe trains on conditions (fake score)
    # Text-to-image: the image size in pixels (square); null: the teacher's default (its sample size times
    # the VAE's factor; FluxPipeline's 1024 for Flux). SDXL's size ids and Flux's shift follow it.
    resolution: Optional[int] = None
    # Flux-dev's embedded guidance scale (its transformer embeds it; FluxPipeline's default 3.5); null: 3.5.
    embedded_guidance: Optional[float] = None
    # Text-to-image: the encoded prompts kept in CPU memory per process, MiB (the least recently used go first and
    # are encoded again when drawn): about 0.12 MiB a prompt for SD1.5, 4 for Flux's T5 at 512 tokens.
    embedding_cache_mib: float = 4096.0
    # Real images, from one source: an image folder (class sub-folders are class labels; a metadata.jsonl in it,
    # diffusers' imagefolder layout, pairs each file with its caption), a Hugging Face dataset (a Hub name or a
    # save_to_disk folder) or webdataset tar shards (brace patterns: data/{000..127}.tar). A paired source's
    # captions condition its images (DMD2's GAN, LCM on real images) and, without data.prompts, are the prompts.
    images: Optional[str] = None  # the digits teacher uses the digits
    dataset: Optional[str] = None
    split: str = "train"  # data.dataset's split
    # Read data.dataset as a stream, in order (`data.streamed`): nothing downloaded or indexed ahead. The samples then
    # depend on the process count; the generator's prompts come from data.prompts (the captions are not known ahead).
    streaming: bool = False
    shuffle_buffer: int = 1000  # streaming: rows shuffled within a buffer of this many (datasets' default); 0: none
    shards: Optional[str] = None
    # Paired sources' columns (a shard's member extensions); null: the Image-typed column, else image / img (shards:
    # jpg, jpeg, png, webp; metadata.jsonl: file_name), and the first of text, caption, prompt, txt.
    image_column: Optional[str] = None
    caption_column: Optional[str] = None
    label_column: Optional[str] = None  # class-conditional teachers: the class label's column (shards: cls)
    # A folder `python -m stepdistill.precompute` wrote for this teacher and resolution: its VAE latents are the real
    # images and its text embeddings are read instead of encoded (instead of data.images / dataset / shards).
    precomputed: Optional[str] = None
    image_channels: int = 3
    center_crop: bool = True  # false: a random square crop of each image (its shorter side resized first)
    random_flip: bool = False
    # DataLoader worker processes (per training process) decoding the next steps' real images from files
    loader_workers: int = 4
    # Real images are all decoded at setup; a file that does not decode stops the run there, naming it.
    # true: such files are skipped instead (one warning gives the count and the first names).
    skip_corrupt: bool = False
    # Image-conditioned teachers (super-resolution): the real images degraded (`stepdistill.degradations`:
    # bicubic downsampling by this factor, then the options below) are the condition, concatenated to the
    # network input; 0: the teacher is class-, text- or unconditional. Real images: data.images, else the
    # natural-image patches (RGB teachers, `data.patches` of them) or the digits (one-channel teachers).
    condition_scale: int = 0
    degradation_blur: float = 0.0  # Gaussian blur before the downsample, sigma in HR pixels
    degradation_noise: float = 0.0  # Gaussian noise on the LR image, sigma in 8-bit levels
    degradation_jpeg: Optional[int] = None  # JPEG quality of the LR image; null: no JPEG
    patches: int = 4096  # natural-image training patches (fixed crops of the training images)


@dataclass
class EvalConfig:
    enabled: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)
    # The teacher's rows beside the student's: "table" reads the shipped teacher's committed rows (same
    # protocol and seeds; its speed is timed here) and measures any other teacher; "measure" always measures
    # (~3,000 images at 35 NFE after training); "none" skips them.
    teacher_rows: Literal["table", "measure", "none"] = "table"
    teacher_sampler: SamplerName = "dpmpp_2m"
    teacher_nfe: int = 35
    # The student's rows: its default steps first, then these step counts (a consistency student samples
    # any number of its grid's levels: 1, 2, 4, 8); () measures the default only.
    student_steps: tuple[int, ...] = ()
    # None: OUTPUT/results.json. The committed tables (eval/results/<recipe>_digits.json) are written only
    # when named explicitly, e.g. `eval.results=eval/results/dmd2_digits.json`.
    results: Optional[str] = None


@dataclass
class ExportConfig:
    enabled: bool = True  # write OUTPUT/pipeline (a diffusers folder with a model card)
    hub_repo: Optional[str] = None  # also upload it; the token comes from HF_TOKEN / huggingface-cli login
    private: bool = True
    # The model card's license; null: the teacher's (the project's for its shipped teachers, else the
    # teacher's model card's; `other` with a note when unknown).
    license: Optional[str] = None


@dataclass
class RecipeConfig:
    """The sections every recipe's config has; a recipe's config extends it with its own `model`, `loss` and `optim`
    (and its own defaults for these, e.g. `train.max_steps`). `resume`: "latest" (in train.output_dir) or a
    checkpoint folder."""

    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    resume: Optional[str] = None
