"""The tiny random pipelines, one builder per family; see the package docstring for their shapes.

Re-seeding before each network makes every component's weights depend on `seed` alone, not on the order or
number of random draws made by the other constructors.
"""

from __future__ import annotations

import torch

from .vocab import CLIP_MAX_LENGTH, clip_tokenizer, t5_tokenizer

# SD1.5's / SDXL's betas; DDIM for SD1.5 because it accepts every prediction type and any step count.
_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, timestep_spacing="leading")
# SD3's and Flux-dev's FlowMatchEulerDiscreteScheduler configs.
_SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
_FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                       max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None = None, quant: bool = True):
    """Four levels like the real VAEs, so the pipelines' vae_scale_factor is 8: 64x64 images <-> 8x8 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, latent_channels=latent_channels,
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=quant, use_post_quant_conv=quant).eval()


def _clip(tokenizer, *, projection: bool, hidden: int = 32, max_positions: int = CLIP_MAX_LENGTH):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=max_positions, hidden_act="quick_gelu",
                            projection_dim=hidden, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(tokenizer, d_model: int):
    """T5 v1.1's encoder (gated-GELU), the text encoder of SD3 and Flux."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)).eval()


def sd15(seed: int, prediction_type: str):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    torch.manual_seed(seed)
    vae = _vae(4, 0.18215)  # SD1.5's latent scale
    torch.manual_seed(seed)
    text_encoder = _clip(tokenizer, projection=False)
    scheduler = DDIMScheduler(**_SD_BETAS, clip_sample=False, set_alpha_to_one=False, prediction_type=prediction_type)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet.eval(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def sdxl(seed: int, prediction_type: str):
    """SDXL's layout: two CLIP encoders (the second with a projection: the pooled embedding), their
    penultimate hidden states concatenated (cross-attention 64 = 32 + 32), and the "text_time" added
    embedding of the pooled embedding and six size/crop ids (80 = 32 + 6 x 8)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(4, 8), use_linear_projection=True, norm_num_groups=8,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80)
    torch.manual_seed(seed)
    vae = _vae(4, 0.13025)  # SDXL's latent scale
    torch.manual_seed(seed)
    text_encoder = _clip(tokenizer, projection=False)
    torch.manual_seed(seed + 1)
    text_encoder_2 = _clip(tokenizer, projection=True)
    scheduler = EulerDiscreteScheduler(**_SD_BETAS, prediction_type=prediction_type)
    return StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=clip_tokenizer(), unet=unet.eval(),
                                     scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False)


def sd3(seed: int, prediction_type: str):
    """SD3's layout: two CLIP encoders with projections (pooled 64 = 32 + 32) and T5, whose 64-wide states
    the CLIP states (32 + 32) join along the sequence; an MMDiT on 8x8x4 latents, patch 1."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    _flow_only(prediction_type)
    tokenizer, tokenizer_3 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=64,
        pos_embed_max_size=16)
    torch.manual_seed(seed)
    vae = _vae(4, 1.5305, 0.0609, quant=False)  # SD3's latent scale and shift
    torch.manual_seed(seed)
    text_encoder = _clip(tokenizer, projection=True)
    torch.manual_seed(seed + 1)
    text_encoder_2 = _clip(tokenizer, projection=True)
    torch.manual_seed(seed + 2)
    text_encoder_3 = _t5(tokenizer_3, 64)
    return StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(**_SD3_SCHEDULER), vae=vae,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(),
        text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def flux(seed: int, prediction_type: str):
    """Flux-dev's layout: CLIP (pooled 32) and T5 (32-wide states), 2x2-packed latents (8x8x4 -> 16 tokens of
    16), rotary ids, a guidance embedding; the resolution-dependent shift of Flux-dev's scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    _flow_only(prediction_type)
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8))
    torch.manual_seed(seed)
    vae = _vae(4, 0.3611, 0.1159, quant=False)  # Flux's latent scale and shift
    torch.manual_seed(seed)
    text_encoder = _clip(tokenizer, projection=False)
    torch.manual_seed(seed + 2)
    text_encoder_2 = _t5(tokenizer_2, 32)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**_FLUX_SCHEDULER), vae=vae,
                        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
                        tokenizer_2=tokenizer_2, transformer=transformer.eval())


def _flow_only(prediction_type: str) -> None:
    if prediction_type != "flow":
        raise ValueError(f"flow-matching transformers predict the flow; prediction_type {prediction_type!r} "
                         "applies to the UNet families (sd15, sdxl)")


BUILDERS = {"sd15": sd15, "sdxl": sdxl, "sd3": sd3, "flux": flux}
