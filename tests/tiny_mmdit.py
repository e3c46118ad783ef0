"""Tiny random FLUX and SD3 transformers built from configs (nothing downloaded), and how to call them, for tests."""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from pipelines import flow_matching
from pipelines.joint_attention import flux_image_ids, flux_text_ids

LATENT_CHANNELS = 4
TEXT_DIM = 32  # the text encoders' width (T5's 4096 at full size)
POOLED_DIM = 16


def tiny_flux(seed: int = 0, guidance_embeds: bool = True) -> FluxTransformer2DModel:
    """Two dual-stream and two single-stream blocks; FLUX-dev's guidance embedding when `guidance_embeds`."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, pooled_projection_dim=POOLED_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4)).eval()


def tiny_sd3(seed: int = 0) -> SD3Transformer2DModel:
    """Three joint blocks (the last one context_pre_only), the first with SD3.5's image-only attn2, qk-norm."""
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=TEXT_DIM, caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM, out_channels=LATENT_CHANNELS, pos_embed_max_size=16,
        dual_attention_layers=(0,), qk_norm="rms_norm").eval()


@torch.no_grad()
def call(transformer, latents: torch.Tensor, text: torch.Tensor, pooled: torch.Tensor, sigma: float = 0.7,
         guidance: float = 3.5) -> torch.Tensor:
    """One denoiser call on latent-grid `latents` [B, C, H, W], as the family does it; returns [B, C, H, W]."""
    rows = latents.shape[0]
    if isinstance(transformer, FluxTransformer2DModel):
        grid = flow_matching.token_grid(latents.shape[-2:])
        extra = {}
        if transformer.config.guidance_embeds:
            extra["guidance"] = torch.full((rows,), guidance)
        out = transformer(flow_matching.pack(latents), encoder_hidden_states=text, pooled_projections=pooled,
                          timestep=torch.full((rows,), sigma), img_ids=flux_image_ids(grid),
                          txt_ids=flux_text_ids(text.shape[1]), **extra).sample
        return flow_matching.unpack(out, latents.shape[-2:])
    return transformer(latents, encoder_hidden_states=text, pooled_projections=pooled,
                       timestep=torch.full((rows,), sigma * 1000)).sample


# --------------------------------------------------------------------------------------------- whole pipelines
def tiny_flow_vae():
    """The tiny VAE of the other families, with SD3/FLUX's latent shift as well as a scale."""
    from tiny_families import tiny_vae

    vae = tiny_vae()
    vae.register_to_config(scaling_factor=1.3, shift_factor=0.1)
    return vae


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """FLUX-shaped: CLIP (pooled, 32) and T5 (width 32, a 16-token window), 2 + 2 blocks, FLUX's dynamic shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tiny_families import clip_config, t5_tokenizer
    from tiny_models import tiny_tokenizer
    from transformers import CLIPTextModel, T5EncoderModel

    from pipelines import LayeredPipeline

    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), t5_tokenizer()
    text_encoder = CLIPTextModel(clip_config(tokenizer))
    text_encoder_2 = T5EncoderModel(t5_config(tokenizer_2, 32))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipeline = LayeredPipeline(vae=tiny_flow_vae(), text_encoder=text_encoder, tokenizer=tokenizer,
                               text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
                               scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_sd3_pipeline(seed: int = 0):
    """SD3-shaped: two CLIPs with projections (32 + 32 = 64 wide, pooled 64), T5 of width 64, three joint blocks
    (SD3.5's attn2 in the first, qk-norm), shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tiny_families import clip_config, t5_tokenizer
    from tiny_models import tiny_tokenizer
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    from pipelines import LayeredPipeline

    torch.manual_seed(seed)
    tokenizer, tokenizer_2, tokenizer_3 = tiny_tokenizer(), tiny_tokenizer(), t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=3, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64,
        out_channels=LATENT_CHANNELS, pos_embed_max_size=16, dual_attention_layers=(0,), qk_norm="rms_norm")
    pipeline = LayeredPipeline(
        vae=tiny_flow_vae(), text_encoder=CLIPTextModelWithProjection(clip_config(tokenizer)), tokenizer=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(clip_config(tokenizer_2)), tokenizer_2=tokenizer_2,
        text_encoder_3=T5EncoderModel(t5_config(tokenizer_3, 64)), tokenizer_3=tokenizer_3, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def t5_config(tokenizer, width: int):
    from transformers import T5Config

    return T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)


MMDIT_PIPELINES = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}
