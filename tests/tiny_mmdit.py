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
