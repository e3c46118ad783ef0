"""Architectures of the embedded model, in one place.

Everything is built from configs (no hub access). Numbers were measured on the 2-core CPU dev machine
(1 busy core for training); see assets/embedded/training_state.json for what a run actually took.

Shapes world: 64x64 RGB images -> VAE (x4 down) -> 16x16x4 latents -> UNet with cross-attention to a tiny
CLIP text encoder (word-level tokenizer, 20 tokens).
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_DIR = REPO_ROOT / "assets" / "embedded"
RUNS_DIR = REPO_ROOT / "runs"

IMAGE_SIZE = 64
LATENT_SIZE = 16
LATENT_CHANNELS = 4
MAX_TOKENS = 20  # captions are <= ~16 tokens incl. <bos>/<eos>
TEXT_HIDDEN = 128

# Special tokens (fixed ids, in this order, at the start of the vocabulary).
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]  # ids 0, 1, 2, 3.  NB eos != 2 so CLIP pools at the real <eos>.

# ---------------------------------------------------------------- VAE
# AutoencoderKL, 3 blocks -> 2 downsamplings (64 -> 16), 4 latent channels, no attention anywhere.
# Wider than the failed experiment ([16,32,64], 0.65M params, 24.9 dB): (32, 64, 128), 1 resnet per block
# in the encoder (decoder gets layers_per_block + 1 = 2) -> ~2.9M params.
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    act_fn="silu",
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
    mid_block_add_attention=False,
    scaling_factor=1.0,  # replaced by 1/std(latents) measured on 2000 train scenes after training
)

TINY_VAE_CONFIG = dict(VAE_CONFIG, block_out_channels=(8, 16, 16), norm_num_groups=4, sample_size=32)

# ---------------------------------------------------------------- text encoder
def text_config(vocab_size: int, tiny: bool = False) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64 if tiny else TEXT_HIDDEN,
        intermediate_size=128 if tiny else 4 * TEXT_HIDDEN,
        num_hidden_layers=1 if tiny else 4,
        num_attention_heads=2 if tiny else 4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        projection_dim=64 if tiny else TEXT_HIDDEN,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )

# ---------------------------------------------------------------- UNet
# 16x16x4 latents. Resolutions 16 / 8 / 4, cross-attention at all three + mid block (the region-routing
# attention processor needs cross-attention at several resolutions). 4.31M params.
# Measured (1 busy core): train step at batch 32 ~0.70 s; inference forward at batch 2 (CFG) ~27 ms, so
# 20 DDIM steps + VAE decode ~0.6 s per edit. Wider variants were 3-5x slower: (64,128,128) 7.0M: 2.0 s/step,
# 90 ms/forward; (64,128) 2-level: 2.6 s, 76 ms -- 16x16 resolution width dominates.
UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    attention_head_dim=4,  # = number of heads in diffusers' legacy naming (4 heads)
    cross_attention_dim=TEXT_HIDDEN,
    norm_num_groups=16,
    transformer_layers_per_block=1,
)


def unet_config(tiny: bool = False) -> dict:
    if not tiny:
        return dict(UNET_CONFIG)
    return dict(
        UNET_CONFIG,
        sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        attention_head_dim=2,
        norm_num_groups=8,
        cross_attention_dim=64,
    )

# ---------------------------------------------------------------- scheduler
# Cosine (squaredcos_cap_v2) schedule has ~zero terminal SNR (alphas_cumprod[-1] ~ 2e-9), so the model predicts
# v (epsilon-prediction is ill-posed at t=T). DDIM sampling uses "trailing" spacing so the first step starts at
# t=999 (pure noise, matching training); set_alpha_to_one=True for a clean final step.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_schedule="squaredcos_cap_v2",
    prediction_type="v_prediction",
    clip_sample=False,
    set_alpha_to_one=True,
    steps_offset=0,
    timestep_spacing="trailing",
)


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_vae(tiny: bool = False):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**(TINY_VAE_CONFIG if tiny else VAE_CONFIG))


def make_text_encoder(vocab_size: int, tiny: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**text_config(vocab_size, tiny)))


def make_unet(tiny: bool = False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**unet_config(tiny))


def make_scheduler(kind: str = "ddim"):
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    return cls(**SCHEDULER_CONFIG)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
