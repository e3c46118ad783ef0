"""Tiny random SDXL and PixArt-α components built from configs (no downloads), for the model-family tests.

Same image size and VAE as tests/tiny_models.py (32x32 pixels, 16x16 latents), so the family tests can reuse
the SD tests' boxes. Each family keeps what makes it differ: SDXL has two CLIP encoders (the second with a
projection) and a UNet with added text/size conditioning; PixArt-α has a T5 encoder whose prompts are padded
(the token mask matters), a transformer with resolution/aspect conditioning and a learned-sigma output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    PixArtTransformer2DModel,
    UNet2DConditionModel,
)
from tiny_models import IMAGE_SIZE, MAX_TOKENS, WORDS, tiny_pipeline, tiny_tokenizer
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from pipelines import LayeredPipeline

FAMILIES = ("sd", "sdxl", "pixart")
T5_TOKENS = 16  # the tiny T5 window; most test prompts are shorter, so every prompt has padding


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE)


def clip_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, projection_dim=32)


def tiny_sdxl_pipeline(seed: int = 0) -> LayeredPipeline:
    """SDXL-shaped: cross-attention dim 64 = 32 + 32 (both encoders' penultimate layers), pooled 32,
    add-embedding input 6 size ids x 8 + 32."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_tokenizer(), tiny_tokenizer()
    text_encoder = CLIPTextModel(clip_config(tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(tokenizer_2))
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64, norm_num_groups=8)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       steps_offset=1, timestep_spacing="leading")
    pipeline = LayeredPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               scheduler=scheduler, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer shaped like T5's: no start token, "</s>" at the end, "<pad>" = 0."""
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {word: index for index, word in enumerate(specials + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                   model_max_length=T5_TOKENS)


def sentencepiece_tokenizer_folder(folder: Path) -> Path:
    """A T5 tokenizer folder as PixArt-α ships it: a SentencePiece model (spiece.model) and its config only."""
    import json

    import sentencepiece

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder.parent / f"{folder.name}-corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) * 10)
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=60, pad_id=0, eos_id=1, unk_id=2,
        bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    (folder / "spiece.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "model_max_length": T5_TOKENS, "extra_ids": 0, "eos_token": "</s>",
         "pad_token": "<pad>", "unk_token": "<unk>"}))
    return folder


def tiny_pixart_pipeline(seed: int = 0, tokenizer=None) -> LayeredPipeline:
    """PixArt-α-shaped: 2 blocks of 3 heads x 8, patch 2 (8x8 tokens for 16x16 latents), T5 width 32, resolution
    and aspect-ratio conditioning on (as at 1024 px), 8 output channels (learned sigma)."""
    torch.manual_seed(seed)
    tokenizer = tokenizer or t5_tokenizer()
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0))
    transformer = PixArtTransformer2DModel(
        sample_size=IMAGE_SIZE // 2, num_layers=2, patch_size=2, num_attention_heads=3, attention_head_dim=8,
        in_channels=4, out_channels=8, cross_attention_dim=24, caption_channels=32, use_additional_conditions=True)
    scheduler = DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    pipeline = LayeredPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                               scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def tiny_family_pipeline(family: str, seed: int = 0) -> LayeredPipeline:
    builders = {"sd": tiny_pipeline, "sdxl": tiny_sdxl_pipeline, "pixart": tiny_pixart_pipeline}
    return builders[family](seed=seed)


def save_tiny_family(folder: Path, family: str, seed: int = 0) -> Path:
    tiny_family_pipeline(family, seed).save_pretrained(folder)
    return folder
