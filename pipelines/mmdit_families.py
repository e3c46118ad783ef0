"""The joint-attention families: Stable Diffusion 3/3.5 and FLUX.1, behind the `ModelFamily` seam.

Both read text and image tokens in one attention per block (MM-DiT), sample on a flow-matching schedule
(pipelines/flow_matching.py) and use a 16-channel VAE with a shift as well as a scale. What each family adds:

- text: CLIP pooled embeddings (global, like SDXL's: the current edit's prompt under MQD) and T5 hidden states
  whose padding is never attended: the token mask goes into the joint attention mask, and padding columns every
  prompt has are cut before the call (`prepare_text`; exact, see joint_attention.trim_padding). SD3 also reads
  two CLIP encoders' penultimate states (77 tokens, all attended, as SD3 was trained) before its T5 tokens.
- denoiser: SD3 takes the latent grid and the timestep in [0, 1000]; FLUX takes the latent packed in 2x2 patches
  and sigma in [0, 1], with rotary positions for text (all zero) and image tokens, and FLUX-dev its guidance scale
  as an embedding: that is FLUX-dev's `guidance="distilled"` (no adapter, no negative prompt, one row per step).
- MQD: every joint attention block runs under joint_attention's processors, always: with one region when there is
  no routing, so T5 padding is masked in plain edits too and MQD's cost is measured against the same baseline.
  CFG's unconditional row attends plainly, in a call of its own with one copy of its prompt (PlainRowsApart).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from . import flow_matching
from .attention import RegionLoopAttnProcessor, RegionMaps
from .families import ModelFamily, parameter_dtype
from .text_conditioning import TextConditioning
from .joint_attention import (DEFAULT_PLAIN_BLOCKS, JointRegions, flux_image_ids, flux_text_ids,
                              joint_processors, joint_regional_attention, processor_class, trim_padding)


class PlainRowsApart:
    """CFG's unconditional rows and the MQD rows of one batch, as two denoiser calls.

    In one batched call every row has the same text length, so the unconditional row carries its null prompt once
    per region (all copies but the first idle, joint_attention: plain_rows) through every block's text stream and
    attention. Run on its own, it reads one copy with its padding cut, attends without a mask (the model's fast
    kernel), and MQD's extra text tokens cost only the rows that use them. The same attention, so the same result
    up to float rounding (tests/test_mmdit_families.py).
    """

    def __init__(self, transformer, maps: RegionMaps, grid, text: TextConditioning, plain_rows: tuple[int, ...], cls):
        self.rows = int(text.embeds.shape[0])
        if not all(0 <= row < self.rows for row in plain_rows):
            raise ValueError(f"plain rows {plain_rows} are outside a batch of {self.rows}")
        self.plain = tuple(sorted(plain_rows))
        self.routed = tuple(row for row in range(self.rows) if row not in plain_rows)
        self.per_region = maps.tokens
        self._parts = None  # (text, its plain rows' part, its routed rows' part)
        plain_text = self.plain_text(text)
        one = RegionMaps(np.zeros(maps.latent_size, dtype=np.int64), 1, plain_text.tokens, maps.latent_size,
                         grids=maps.grids)
        self.plain_processors = joint_processors(transformer, JointRegions(one, grid, plain_text.attention_mask),
                                                 (0, 0), cls)
        routed_mask = self.select(text, self.routed).attention_mask
        self.routed_processors = joint_processors(transformer, JointRegions(maps, grid, routed_mask),
                                                  DEFAULT_PLAIN_BLOCKS, cls)

    @staticmethod
    def select(text: TextConditioning, rows: tuple[int, ...]) -> TextConditioning:
        def pick(tensor):
            return None if tensor is None else tensor[list(rows)] if tensor.shape[0] > 1 else tensor
        return TextConditioning(pick(text.embeds), pick(text.attention_mask), pick(text.pooled))

    def plain_text(self, text: TextConditioning) -> TextConditioning:
        """The plain rows' first prompt copy, padding every row has cut."""
        rows = self.select(text, self.plain)
        mask = None if rows.attention_mask is None else rows.attention_mask[:, :self.per_region]
        embeds, mask, _ = trim_padding(rows.embeds[:, :self.per_region], mask, self.per_region, 1)
        return TextConditioning(embeds, None if mask is None or mask.all() else mask, rows.pooled)

    def calls(self, text: TextConditioning):
        """(rows, processors, text) of each call; the parts of a text are cut once (it is the same every step)."""
        if self._parts is None or self._parts[0] is not text:
            self._parts = (text, self.plain_text(text), self.select(text, self.routed))
        _, plain_text, routed_text = self._parts
        if self.plain:
            yield self.plain, self.plain_processors, plain_text
        if self.routed:
            yield self.routed, self.routed_processors, routed_text


class JointAttentionFamily(ModelFamily):
    """What SD3 and FLUX share: flow matching, 2x2 token patches, joint-attention MQD, T5 padding masked."""

    denoiser_name = "transformer"
    schedulers = ("flow-euler",)
    CLIP_TOKENS = 77  # the CLIP encoders' window
    T5_TOKENS: ClassVar[int]  # the T5 window the family was trained with (diffusers' max_sequence_length)
    t5_component: ClassVar[tuple[str, str]]  # (tokenizer, encoder) of the T5 encoder

    @property
    def size_multiple(self) -> int:
        return 2 * self.pipeline.vae_scale_factor

    @property
    def t5_tokens(self) -> int:
        return min(self.T5_TOKENS, int(getattr(self.pipeline, self.t5_component[0]).model_max_length))

    @property
    def max_prompt_tokens(self) -> int:
        """The shortest window: CLIP's 77 tokens (a longer prompt is refused, not cut, as for every family)."""
        clip = [self.clip_tokens(tok) for tok, _ in self.text_components if tok != self.t5_component[0]]
        return min([self.t5_tokens, *clip])

    def clip_tokens(self, tokenizer_name: str) -> int:
        return min(self.CLIP_TOKENS, int(getattr(self.pipeline, tokenizer_name).model_max_length))

    def padded(self, tokenizer_name: str, texts, length: int):
        return getattr(self.pipeline, tokenizer_name)(list(texts), padding="max_length", max_length=length,
                                                      truncation=True, return_tensors="pt")

    @torch.no_grad()
    def encode_t5(self, texts) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states [B, L, D] and the token mask [B, L] (True on real tokens)."""
        tokenizer, encoder_name = self.t5_component
        encoder = getattr(self.pipeline, encoder_name)
        tokens = self.padded(tokenizer, texts, self.t5_tokens)
        hidden = encoder(tokens.input_ids.to(encoder.device))[0]
        return hidden, tokens.attention_mask.to(hidden.device).bool()

    # ------------------------------------------------------------------ schedule
    def set_timesteps(self, sampler, num_inference_steps, latent_size, device=None) -> None:
        grid = flow_matching.token_grid(latent_size)
        flow_matching.set_flow_timesteps(sampler, num_inference_steps, grid[0] * grid[1], device)

    # ------------------------------------------------------------------ MQD
    @staticmethod
    def routes(processor_name: str) -> bool:
        """The joint attention of every block (SD3.5's image-only attn2 stays as it is)."""
        return processor_name.endswith(".attn.processor")

    def token_grids(self, latent_size):
        grid = flow_matching.token_grid(latent_size)
        return {grid[0] * grid[1]: grid}

    def prepare_text(self, text: TextConditioning, regions: int) -> TextConditioning:
        """Cut the padding columns every prompt of every row has (they would receive no weight anyway)."""
        embeds, mask, _ = trim_padding(text.embeds, text.attention_mask, text.tokens // regions, regions)
        return TextConditioning(embeds, mask, text.pooled)

    def attention_routing(self, maps, text, processor_class_=None, plain_rows=(), latent_size=None):
        """Joint-attention MQD for the whole loop; one region (the prompt everywhere) when `maps` is None."""
        size = tuple(maps.latent_size) if maps is not None else tuple(latent_size)
        grids = self.token_grids(size)
        if maps is None:
            maps = RegionMaps(np.zeros(size, dtype=np.int64), 1, text.tokens, size, grids=grids)
        grid = next(iter(grids.values()))
        reference = processor_class_ is RegionLoopAttnProcessor  # benchmark/mqd_speed.py times the loop
        cls = processor_class(self.denoiser, reference=reference)
        if plain_rows and maps.count > 1:
            return self.plain_rows_apart(PlainRowsApart(self.denoiser, maps, grid, text, tuple(plain_rows), cls))
        regions = JointRegions(maps, grid, text.attention_mask, tuple(plain_rows))
        return joint_regional_attention(self.denoiser, regions, DEFAULT_PLAIN_BLOCKS, cls)

    @contextmanager
    def plain_rows_apart(self, apart: PlainRowsApart):
        """`predict` runs the plain rows and the routed rows as two calls while the block lasts."""
        originals = dict(self.denoiser.attn_processors)
        self._apart = apart
        try:
            yield
        finally:
            self._apart = None
            self.denoiser.set_attn_processor(originals)

    def predict(self, latents, timestep, text, timestep_cond=None):
        """The denoiser's output; under `plain_rows_apart`, the plain rows (CFG's unconditional half) hear one
        copy of their prompt in a call of their own, the other rows run MQD in another (see PlainRowsApart)."""
        apart = getattr(self, "_apart", None)
        if apart is None or latents.shape[0] != apart.rows:
            return self.predict_rows(latents, timestep, text, timestep_cond)
        out = None
        for rows, processors, part in apart.calls(text):
            self.denoiser.set_attn_processor(dict(processors))  # diffusers pops from the dict it is given
            index = torch.tensor(rows, device=latents.device)
            cond = None if timestep_cond is None else timestep_cond[index]
            result = self.predict_rows(latents[index], timestep, part, cond)
            if out is None:
                out = result.new_empty((latents.shape[0], *result.shape[1:]))
            out[index] = result
        return out

    def predict_rows(self, latents, timestep, text, timestep_cond=None):
        raise NotImplementedError

    # ------------------------------------------------------------------ identity
    @property
    def native_size(self) -> tuple[int, int]:
        side = int(self.pipeline.vae.config.sample_size)
        return side, side


class StableDiffusion3(JointAttentionFamily):
    """SD3/SD3.5: CLIP-L and CLIP-G (penultimate states side by side, zero-padded to T5's width) then T5 on the
    token axis; both CLIPs' projected pooled outputs side by side; CFG."""

    name = "sd3"
    label = "Stable Diffusion 3"
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"),
                       ("tokenizer_3", "text_encoder_3"))
    t5_component = ("tokenizer_3", "text_encoder_3")
    T5_TOKENS = 256  # diffusers' StableDiffusion3Pipeline max_sequence_length
    default_settings = {"scheduler": "flow-euler", "guidance_scale": 7.0, "num_inference_steps": 28}

    @classmethod
    def matches(cls, pipeline) -> bool:
        return isinstance(pipeline.transformer, SD3Transformer2DModel)

    @torch.no_grad()
    def encode_prompt(self, texts) -> TextConditioning:
        hidden, pooled = [], []
        for tokenizer, encoder_name in self.text_components[:2]:
            encoder = getattr(self.pipeline, encoder_name)
            tokens = self.padded(tokenizer, texts, self.clip_tokens(tokenizer))
            out = encoder(tokens.input_ids.to(encoder.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled.append(out[0])  # text_embeds: the projected pooled output
        t5, t5_mask = self.encode_t5(texts)
        clip = F.pad(torch.cat(hidden, dim=-1), (0, t5.shape[-1] - sum(h.shape[-1] for h in hidden)))
        clip_mask = torch.ones(clip.shape[:2], dtype=torch.bool, device=t5_mask.device)
        dtype = parameter_dtype(self.denoiser)
        return TextConditioning(torch.cat([clip, t5], dim=1).to(dtype), torch.cat([clip_mask, t5_mask], dim=1),
                                torch.cat(pooled, dim=-1).to(dtype))

    def predict_rows(self, latents, timestep, text, timestep_cond=None):
        timestep = torch.as_tensor(timestep, device=latents.device, dtype=latents.dtype).reshape(-1)
        return self.denoiser(latents, encoder_hidden_states=text.embeds, pooled_projections=text.pooled,
                             timestep=timestep.expand(latents.shape[0])).sample


class Flux(JointAttentionFamily):
    """FLUX.1: CLIP-L's pooled output and T5's states; dev embeds the guidance scale (its distilled guidance),
    schnell runs a few steps without guidance."""

    name = "flux"
    label = "FLUX.1"
    text_components = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    t5_component = ("tokenizer_2", "text_encoder_2")
    T5_TOKENS = 512  # FLUX-dev's window (schnell was trained with 256: a folder's tokenizer may say less)

    @classmethod
    def matches(cls, pipeline) -> bool:
        return isinstance(pipeline.transformer, FluxTransformer2DModel)

    @property
    def native_guidance(self) -> bool:
        return bool(self.denoiser.config.guidance_embeds)

    @property
    def default_settings(self) -> dict:
        if self.native_guidance:  # FLUX-dev
            return {"scheduler": "flow-euler", "guidance": "distilled", "guidance_scale": 3.5,
                    "num_inference_steps": 28}
        return {"scheduler": "flow-euler", "guidance_scale": 0.0, "num_inference_steps": 4}  # schnell

    def guidance_condition(self, scale, rows, device, dtype):
        return torch.full((rows,), float(scale), device=device, dtype=dtype)

    @torch.no_grad()
    def encode_prompt(self, texts) -> TextConditioning:
        encoder = self.pipeline.text_encoder
        tokens = self.padded("tokenizer", texts, self.clip_tokens("tokenizer"))
        pooled = encoder(tokens.input_ids.to(encoder.device)).pooler_output
        t5, mask = self.encode_t5(texts)
        dtype = parameter_dtype(self.denoiser)
        return TextConditioning(t5.to(dtype), mask, pooled.to(dtype))

    def predict_rows(self, latents, timestep, text, timestep_cond=None):
        """Pack, call with sigma = t / 1000 and the rotary ids, unpack. `timestep_cond` is FLUX-dev's guidance
        scale per row (from `guidance_condition`); without one (guidance off) dev embeds a scale of 1."""
        rows = latents.shape[0]
        sigma = torch.as_tensor(timestep, device=latents.device, dtype=latents.dtype).reshape(-1) / 1000
        guidance = None
        if self.native_guidance:
            guidance = timestep_cond if timestep_cond is not None else self.guidance_condition(
                1.0, rows, latents.device, latents.dtype)
        grid = flow_matching.token_grid(latents.shape[-2:])
        out = self.denoiser(flow_matching.pack(latents), encoder_hidden_states=text.embeds,
                            pooled_projections=text.pooled, timestep=sigma.expand(rows), guidance=guidance,
                            img_ids=flux_image_ids(grid, latents.device, latents.dtype),
                            txt_ids=flux_text_ids(text.tokens, latents.device, latents.dtype)).sample
        return flow_matching.unpack(out, latents.shape[-2:])


MMDIT_FAMILIES: tuple[type[ModelFamily], ...] = (StableDiffusion3, Flux)
