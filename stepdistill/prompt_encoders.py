"""Prompts -> the denoiser's text conditioning, one encoder per model family (`TextConditioner` uses them).

Each encoder returns per-prompt rows (a dict of tensors, first dimension the prompt) and turns a batch of rows
into the network's keyword arguments. The SDXL, SD3 and Flux encoders call the pipeline's own `encode_prompt`,
so the conditioning is the stock pipeline's exactly (which hidden layer, how the encoders are joined, how
long T5's sequence is); only what the pipeline adds per call (SDXL's size ids, Flux's guidance) is built here:

| family (pipeline)          | rows                         | network keyword arguments                                  |
|----------------------------|------------------------------|------------------------------------------------------------|
| SD 1.x / 2.x               | hidden (77, D)               | encoder_hidden_states                                      |
| SDXL                       | hidden (77, D1 + D2), pooled | encoder_hidden_states, added_cond_kwargs {text_embeds, time_ids} |
| SD3                        | hidden (77 + T, D), pooled   | encoder_hidden_states, pooled_projections                  |
| Flux                       | hidden (T, D), pooled        | encoder_hidden_states, pooled_projections, guidance        |

The empty prompt (classifier-free guidance's unconditional branch) is built as each pipeline builds its
negative: zeros for SDXL when `force_zeros_for_empty_prompt` is set (SDXL base's config), the encoded ""
otherwise.

Prompts longer than a tokenizer's limit (77 tokens for CLIP) are cut to it, as the pipelines do; each encoding
pass that cuts prompts not reported before warns once (`PromptTruncationWarning`): how many, the limit, an example,
and whether cutting made distinct prompts identical (one condition).
"""

from __future__ import annotations

import warnings
from typing import Protocol

import torch

from .families import family_of_pipeline

__all__ = ["PromptEncoder", "ClipPromptEncoder", "SDXLPromptEncoder", "SD3PromptEncoder", "FluxPromptEncoder",
           "prompt_encoder", "PromptTruncationWarning", "truncation_message"]


class PromptTruncationWarning(UserWarning):
    """Prompts longer than the text encoder's token limit were cut to it."""


def _shown(text: str, limit: int = 80) -> str:
    """`text` quoted; a long one by its start and its end (where prompts cut into one differ)."""
    return repr(text) if len(text) <= limit else f"{text[:limit // 2]!r}...{text[-limit // 3:]!r}"


def truncation_message(texts: list[str], tokenizers: list[tuple[str, object, int]]) -> tuple[str | None, set[str]]:
    """(the warning, or None, and the cut prompts) for `texts` encoded through `tokenizers`, (name, tokenizer,
    max_length) each, all of which cut at their max_length. Two distinct prompts are one condition when every
    tokenizer keeps the same tokens of both."""
    if not texts or not tokenizers:
        return None, set()
    cut_by: dict[str, list[tuple[int, str]]] = {}  # prompt -> the tokenizers that cut it (limit, name)
    kept = [[] for _ in texts]  # per prompt: each tokenizer's kept token ids
    for name, tokenizer, limit in tokenizers:
        # one token past the limit tells "longer" without tokenising (and logging) whole long prompts
        longer = tokenizer(texts, truncation=True, max_length=limit + 1).input_ids
        ids = tokenizer(texts, truncation=True, max_length=limit).input_ids
        for i, (text, row) in enumerate(zip(texts, longer)):
            kept[i].append(tuple(ids[i]))
            if len(row) > limit:
                cut_by.setdefault(text, []).append((limit, name))
    if not cut_by:
        return None, set()
    cut = [t for t in texts if t in cut_by]
    by_limit: dict[int, set[str]] = {}
    for limit, name in (where for names in cut_by.values() for where in names):
        by_limit.setdefault(limit, set()).add(name)
    limits = "; ".join(f"{limit} tokens: {', '.join(sorted(names))}" for limit, names in sorted(by_limit.items()))
    message = (f"{len(cut)} of {len(texts)} prompts are longer than the text encoder's token limit ({limits}) and "
               f"are cut to it, e.g. {_shown(cut[0])}")
    groups: dict[tuple, list[str]] = {}
    for text, key in zip(texts, kept):
        group = groups.setdefault(tuple(key), [])
        if text not in group:
            group.append(text)
    merged = [g for g in groups.values() if len(g) > 1 and any(t in cut_by for t in g)]
    if merged:
        message += (f"; after cutting, {sum(len(g) for g in merged)} distinct prompts are identical "
                    f"({len(merged)} group(s) that each become one condition), e.g. {_shown(merged[0][0])} and "
                    f"{_shown(merged[0][1])}")
    return message + "; shorten them to keep their ends", set(cut)


class _CutWarnings:
    """Warns once per encoding pass that cuts prompts not already reported (so a conditioner that checked its
    whole prompt list up front, then encodes a batch at a time, warns once)."""

    _reported: set[str]

    def _tokenizers(self) -> list[tuple[str, object, int]]:
        raise NotImplementedError

    def warn_if_cut(self, texts: list[str]) -> None:
        reported = self.__dict__.setdefault("_reported", set())
        message, cut = truncation_message(list(texts), self._tokenizers())
        if message is not None and not cut <= reported:
            reported |= cut
            warnings.warn(message, PromptTruncationWarning, stacklevel=3)

FLUX_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale: the embedded guidance Flux-dev was distilled at


class PromptEncoder(Protocol):
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def null(self) -> dict[str, torch.Tensor]: ...  # one row: the unconditional branch

    def kwargs(self, rows: dict[str, torch.Tensor]) -> dict: ...

    def call_options(self) -> dict: ...  # what the exported pipeline's call needs to condition the same way


class ClipPromptEncoder(_CutWarnings):
    """SD 1.x / 2.x: CLIP's last hidden state, padded to the tokenizer's 77 tokens."""

    def __init__(self, tokenizer, text_encoder, *, device="cpu"):
        self.tokenizer, self.device = tokenizer, torch.device(device)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)

    def _tokenizers(self) -> list[tuple[str, object, int]]:
        return [("tokenizer", self.tokenizer, self.tokenizer.model_max_length)]

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        self.warn_if_cut(texts)
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(self.device)
        return {"hidden": self.text_encoder(tokens)[0].float()}

    def null(self) -> dict[str, torch.Tensor]:
        return self.encode([""])

    def kwargs(self, rows: dict[str, torch.Tensor]) -> dict:
        return {"encoder_hidden_states": rows["hidden"]}

    def call_options(self) -> dict:
        return {}


class _PipelineEncoder(_CutWarnings):
    """Rows from `pipe.encode_prompt` of a pipeline loaded without its denoiser and VAE; `resolution` is
    the training images' (height, width), which the exported pipeline's call repeats."""

    max_sequence_length: int | None = None
    default_sequence_length: int | None = None
    t5_tokenizer: str | None = None  # the component cut at max_sequence_length; the CLIPs cut at their own limit

    def __init__(self, pipe, resolution: tuple[int, int], *, device="cpu"):
        self.pipe, self.device, self.resolution = pipe, torch.device(device), tuple(resolution)
        for name, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                module.to(self.device).eval().requires_grad_(False)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _tokenizers(self) -> list[tuple[str, object, int]]:
        out = []
        for name, tokenizer in sorted(self.pipe.components.items()):
            if name.startswith("tokenizer") and tokenizer is not None:
                limit = self.max_sequence_length if name == self.t5_tokenizer else tokenizer.model_max_length
                out.append((name, tokenizer, int(limit)))
        return out

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        self.warn_if_cut(texts)
        hidden, pooled = self._encode(texts)
        return {"hidden": hidden.float(), "pooled": pooled.float()}

    def null(self) -> dict[str, torch.Tensor]:
        return self.encode([""])

    def call_options(self) -> dict:
        options = {"height": self.resolution[0], "width": self.resolution[1]}
        if self.max_sequence_length != self.default_sequence_length:
            options["max_sequence_length"] = self.max_sequence_length
        return options


class SDXLPromptEncoder(_PipelineEncoder):
    """SDXL: both encoders' penultimate states joined on features, the second's pooled projection, and the six
    micro-conditioning ids (original size, crop top-left, target size) of an uncropped `resolution` image."""

    def __init__(self, pipe, resolution: tuple[int, int], *, device="cpu"):
        super().__init__(pipe, resolution, device=device)
        h, w = resolution
        self.time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32)
        self.zeros_for_empty = bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def _encode(self, texts):
        hidden, _, pooled, _ = self.pipe.encode_prompt(texts, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return hidden, pooled

    def null(self) -> dict[str, torch.Tensor]:
        rows = self.encode([""])
        return {k: torch.zeros_like(v) for k, v in rows.items()} if self.zeros_for_empty else rows

    def kwargs(self, rows: dict[str, torch.Tensor]) -> dict:
        time_ids = self.time_ids.to(rows["hidden"].device).expand(len(rows["hidden"]), -1)
        return {"encoder_hidden_states": rows["hidden"],
                "added_cond_kwargs": {"text_embeds": rows["pooled"], "time_ids": time_ids}}


class SD3PromptEncoder(_PipelineEncoder):
    """SD3: two CLIPs' penultimate states (joined on features, zero-padded to T5's width) then T5's states on
    the sequence; the two pooled projections joined."""

    default_sequence_length = 256  # StableDiffusion3Pipeline's max_sequence_length
    t5_tokenizer = "tokenizer_3"

    def __init__(self, pipe, resolution: tuple[int, int], *, max_sequence_length: int = 256, device="cpu"):
        super().__init__(pipe, resolution, device=device)
        self.max_sequence_length = max_sequence_length

    def _encode(self, texts):
        hidden, _, pooled, _ = self.pipe.encode_prompt(texts, None, None, device=self.device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
        return hidden, pooled

    def kwargs(self, rows: dict[str, torch.Tensor]) -> dict:
        return {"encoder_hidden_states": rows["hidden"], "pooled_projections": rows["pooled"]}


class FluxPromptEncoder(_PipelineEncoder):
    """Flux: T5's states, CLIP's pooled output; `guidance` is the embedded scale of a guidance-distilled
    transformer (Flux-dev), passed to every call (`network_call`)."""

    default_sequence_length = 512  # FluxPipeline's max_sequence_length
    t5_tokenizer = "tokenizer_2"

    def __init__(self, pipe, resolution: tuple[int, int], *, guidance: float = FLUX_GUIDANCE,
                 max_sequence_length: int = 512, device="cpu"):
        super().__init__(pipe, resolution, device=device)
        self.guidance, self.max_sequence_length = float(guidance), max_sequence_length

    def _encode(self, texts):
        hidden, pooled, _ = self.pipe.encode_prompt(texts, None, device=self.device, num_images_per_prompt=1,
                                                    max_sequence_length=self.max_sequence_length)
        return hidden, pooled

    def kwargs(self, rows: dict[str, torch.Tensor]) -> dict:
        hidden = rows["hidden"]
        return {"encoder_hidden_states": hidden, "pooled_projections": rows["pooled"],
                "guidance": torch.full((len(hidden),), self.guidance, device=hidden.device)}

    def call_options(self) -> dict:
        return {**super().call_options(), "guidance_scale": self.guidance}  # FluxPipeline's embedded guidance


def _max_length(pipe, tokenizer: str, default: int) -> int:
    """The pipeline's T5 sequence length, bounded by the tokenizer's own (a small local tokenizer's)."""
    return min(default, int(getattr(pipe.components.get(tokenizer), "model_max_length", default) or default))


def prompt_encoder(teacher, resolution: tuple[int, int], *, device="cpu", guidance: float | None = None,
                   dtype: torch.dtype = torch.float32):
    """The prompt encoder of `teacher`'s pipeline family (`teachers.Teacher.pipeline_class`). `resolution`:
    the training images' (height, width) in pixels (SDXL's size ids); `guidance`: Flux's embedded scale; `dtype`:
    the text encoders' (frozen: mixed precision's compute dtype)."""
    from diffusers import DiffusionPipeline

    family = family_of_pipeline(teacher.pipeline_class)  # refuses an unsupported class
    if family.prompt_encoder == "ClipPromptEncoder":
        return ClipPromptEncoder(teacher.load_component("tokenizer"),
                                 teacher.load_component("text_encoder", dtype=dtype), device=device)
    skip = {teacher.component: None, "vae": None, **({"image_encoder": None, "feature_extractor": None}
                                                       if family.prompt_encoder == "SDXLPromptEncoder" else {})}
    pipe = DiffusionPipeline.from_pretrained(teacher.root, torch_dtype=dtype, **skip)
    return _BUILDERS[family.prompt_encoder](pipe, resolution, device=device, guidance=guidance)


# How each pipeline-backed encoder is built from its pipeline (`families.Family.prompt_encoder` names it).
_BUILDERS = {
    "SDXLPromptEncoder": lambda pipe, resolution, *, device, guidance: SDXLPromptEncoder(pipe, resolution,
                                                                                          device=device),
    "SD3PromptEncoder": lambda pipe, resolution, *, device, guidance: SD3PromptEncoder(
        pipe, resolution, max_sequence_length=_max_length(pipe, "tokenizer_3", 256), device=device),
    "FluxPromptEncoder": lambda pipe, resolution, *, device, guidance: FluxPromptEncoder(
        pipe, resolution, guidance=FLUX_GUIDANCE if guidance is None else guidance,
        max_sequence_length=_max_length(pipe, "tokenizer_2", 512), device=device),
}
