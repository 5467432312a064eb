"""Model families, one row each: the only place that knows a diffusers class by name.

A row says how to recognise the family (its teachers' pipeline class, its denoiser network's class), which prompt
encoder builds its condition (`prompt_encoders`), how its network is called (`network_call`: Flux's transformer
takes 2x2-packed latent tokens), its default training resolution and latent grid, the pipeline component a
student replaces in an export, and the pipeline class whose `save_lora_weights` writes a student's LoRA.
Adding a family is adding a row here (and its prompt encoder, if new): see docs/adding_a_method.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Family", "FAMILIES", "PIXEL", "family_of_pipeline", "family_of_network", "text_to_image_pipelines"]


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: Optional[str]  # the diffusers pipeline class of its teachers (model_index.json's _class_name)
    network: str  # the denoiser network's class
    component: str  # the pipeline component that is the denoiser (what a student replaces in an export)
    prompt_encoder: Optional[str]  # the `prompt_encoders` class that builds its text condition
    flow: bool = False  # a rectified-flow model (its export samples with sigmas, not timesteps)
    packed: bool = False  # the network takes 2x2-packed latent tokens (Flux)
    default_resolution: Optional[int] = None  # pixels; None: the network's sample size times the VAE's factor
    lora_saver: Optional[str] = None  # the pipeline class whose `save_lora_weights` writes its LoRA

    def latent_channels(self, net_config) -> int:
        """Channels of one latent (Flux's tokens are 2x2 patches of them)."""
        return net_config.in_channels // 4 if self.packed else net_config.in_channels

    def latent_multiple(self, vae_factor: int, net_config) -> int:
        """Image sides must be multiples of this: the VAE's factor times the network's patch (2 for packed tokens)."""
        return vae_factor * (2 if self.packed else net_config.get("patch_size") or 1)

    def resolution(self, vae_factor: int, net_config) -> int:
        """The default training resolution in pixels."""
        return self.default_resolution or net_config.sample_size * vae_factor


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd", "StableDiffusionPipeline", "UNet2DConditionModel", "unet", "ClipPromptEncoder",
           lora_saver="StableDiffusionPipeline"),
    Family("sdxl", "StableDiffusionXLPipeline", "UNet2DConditionModel", "unet", "SDXLPromptEncoder",
           lora_saver="StableDiffusionXLPipeline"),
    Family("sd3", "StableDiffusion3Pipeline", "SD3Transformer2DModel", "transformer", "SD3PromptEncoder", flow=True,
           lora_saver="StableDiffusion3Pipeline"),
    Family("flux", "FluxPipeline", "FluxTransformer2DModel", "transformer", "FluxPromptEncoder", flow=True, packed=True,
           default_resolution=1024, lora_saver="FluxPipeline"),
)}
# pixel-space teachers (the shipped digits and SR teachers, EDM-style ImageNet UNets): no text, no VAE
PIXEL = Family("pixel", None, "UNet2DModel", "unet", None)


def text_to_image_pipelines() -> list[str]:
    return [f.pipeline for f in FAMILIES.values()]


def family_of_pipeline(pipeline_class: str | None) -> Family:
    """The family of a text-to-image teacher's pipeline class (None: SD's, a folder without model_index.json)."""
    name = pipeline_class or "StableDiffusionPipeline"
    for family in FAMILIES.values():
        if family.pipeline == name:
            return family
    raise ValueError(f"text-to-image teachers of class {name} are not supported; supported: "
                     f"{', '.join(text_to_image_pipelines())}")


def family_of_network(net) -> Family:
    """The family of a denoiser network (unwrapped from torch.compile / DDP); the first row of its class (SD and
    SDXL share the UNet class and everything a network decides), else the pixel family."""
    for wrapper in ("_orig_mod", "module", "_orig_mod"):
        net = getattr(net, wrapper, net)
    name = type(net).__name__
    return next((f for f in FAMILIES.values() if f.network == name), PIXEL)
