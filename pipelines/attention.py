"""Multi-Query Disentanglement: each image region's queries listen only to its own layer's prompt.

Regions are built back to front: the background prompt owns every pixel, then each visible earlier
layer takes its mask, then the current edit takes its mask, so later layers occlude earlier ones.
The UNet receives all region prompts concatenated along the token axis; in every cross-attention
layer ONE scaled-dot-product attention call runs with a boolean mask that lets a query see only
its region's tokens (the reference code loops one attention call per region instead). Region
maps are computed once per attention resolution per edit. Self-attention is left alone, so a new
object still sees its surroundings. A text mask the denoiser passes (T5 families: padding tokens, as
diffusers' additive bias) is kept inside the region mask, so padding never receives weight either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

ATTENTION_MODES = ("bcg", "qd", "mqd")  # plain cross-attention, two-way split, full MQD


def owner_map(region_masks: Sequence[np.ndarray]) -> np.ndarray:
    """int64 HxW: for each pixel, the index of the last region whose mask covers it (region 0 = all)."""
    owners = np.zeros(region_masks[0].shape, dtype=np.int64)
    for index, mask in enumerate(region_masks[1:], start=1):
        owners[mask] = index
    return owners


def downsampled_owners(owners: np.ndarray, size: tuple[int, int], count: int) -> torch.Tensor:
    """Owners on an attention grid [h*w]: the region covering most of each cell (ties go to the later layer)."""
    one_hot = F.one_hot(torch.from_numpy(owners), count).permute(2, 0, 1)[None].float()
    coverage = F.adaptive_avg_pool2d(one_hot, size)[0]  # [count, h, w]
    later_first = coverage.flip(0).argmax(0)  # argmax picks the first maximum: flip so the later layer wins
    return (count - 1 - later_first).flatten()


class RegionMaps:
    """Which prompt tokens each query may attend to, per attention resolution, built once per edit."""

    def __init__(self, owners: np.ndarray, count: int, tokens_per_region: int, latent_size: tuple[int, int],
                 grids: dict[int, tuple[int, int]] | None = None):
        self.owners, self.count, self.tokens = owners, count, tokens_per_region
        self.latent_size = latent_size
        # query count -> (h, w) of each cross-attention layer; a model family gives its own (a UNet's by default)
        self.grids = attention_grids(latent_size) if grids is None else grids
        self._cache: dict[int, torch.Tensor] = {}

    @classmethod
    def from_masks(cls, region_masks: Sequence[np.ndarray], tokens_per_region: int, latent_size: tuple[int, int],
                   grids: dict[int, tuple[int, int]] | None = None):
        return cls(owner_map(region_masks), len(region_masks), tokens_per_region, latent_size, grids)

    def query_owners(self, query_length: int) -> torch.Tensor:
        """Region index of every query token of an attention layer with `query_length` queries."""
        if query_length not in self.grids:
            raise ValueError(f"no attention grid has {query_length} queries for latents of {self.latent_size}")
        return downsampled_owners(self.owners, self.grids[query_length], self.count)

    def allowed(self, query_length: int, device: torch.device) -> torch.Tensor:
        """bool [1, 1, Q, regions * tokens]: True where a query may attend to a key token."""
        if query_length not in self._cache:
            key_owner = torch.arange(self.count).repeat_interleave(self.tokens)
            allowed = self.query_owners(query_length)[:, None] == key_owner[None, :]
            self._cache[query_length] = allowed[None, None]
        return self._cache[query_length].to(device)


def attention_grids(latent_size: tuple[int, int]) -> dict[int, tuple[int, int]]:
    """Query count -> (h, w) for each UNet level: stride-2 convolutions round odd sizes up."""
    height, width = latent_size
    grids = {}
    while True:
        grids.setdefault(height * width, (height, width))
        if height == 1 and width == 1:
            return grids
        height, width = math.ceil(height / 2), math.ceil(width / 2)


def split_heads(attn, x: torch.Tensor) -> torch.Tensor:
    """[batch, tokens, heads * head_dim] -> [batch, heads, tokens, head_dim]."""
    return x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)


class RegionalProcessorBase:
    """Shared plumbing of the regional processors: reshape in, project, attend, project out.

    The prompt tokens are the same at every denoising step of an edit, so their keys and values
    are computed once per layer per edit (a processor lives for one edit) instead of once per step.
    """

    def __init__(self, maps: RegionMaps):
        self.maps = maps
        self._keys_values: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if encoder_hidden_states is None:
            raise RuntimeError("regional attention processors belong on cross-attention layers only")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        spatial = hidden_states.ndim == 4
        if spatial:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = split_heads(attn, attn.to_q(hidden_states))
        key, value = self.keys_values(attn, encoder_hidden_states)
        out = self.attend(query, key, value, text_bias(attention_mask, query.shape[0], key.shape[2]))
        out = out.transpose(1, 2).reshape(out.shape[0], -1, out.shape[1] * out.shape[3]).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def keys_values(self, attn, encoder_hidden_states: torch.Tensor):
        cached = self._keys_values.get(id(attn))
        if cached is not None and cached[0] is encoder_hidden_states:
            return cached[1], cached[2]
        key, value = self.project_keys_values(attn, encoder_hidden_states)
        self._keys_values[id(attn)] = (encoder_hidden_states, key, value)
        return key, value

    @staticmethod
    def project_keys_values(attn, encoder_hidden_states: torch.Tensor):
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
        return split_heads(attn, attn.to_k(context)), split_heads(attn, attn.to_v(context))

    def attend(self, query, key, value, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of `query` over the region prompts' keys; `bias` [B, 1, 1, K] is the text mask, if any."""
        raise NotImplementedError


def text_bias(attention_mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """The text mask a denoiser hands its cross-attention, as an additive bias [B, 1, 1, K] (None without one).

    diffusers passes it as (1 - mask) * -10000 of shape [B, 1, K] (PixArt's T5 padding); a boolean mask
    (True = attend) is turned into 0 / -inf.
    """
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape, device=attention_mask.device).masked_fill(
            ~attention_mask, float("-inf"))
    if attention_mask.numel() != batch * keys:
        raise ValueError(f"a cross-attention mask must hold one value per prompt token and batch row ({batch} x "
                         f"{keys}); got shape {tuple(attention_mask.shape)}")
    return attention_mask.reshape(batch, 1, 1, keys)


def with_bias(allowed: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The region mask alone (boolean), or with a text bias: the bias where allowed, -inf elsewhere."""
    if bias is None:
        return allowed
    return torch.where(allowed, bias.to(dtype), torch.tensor(float("-inf"), dtype=dtype, device=bias.device))


class RegionalAttnProcessor(RegionalProcessorBase):
    """MQD in one fused call: scaled-dot-product attention with a region mask over all prompts' tokens."""

    def attend(self, query, key, value, bias=None):
        allowed = self.maps.allowed(query.shape[2], query.device)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=with_bias(allowed, bias, query.dtype))


class RegionLoopAttnProcessor(RegionalProcessorBase):
    """The reference formulation: one attention call per region, then each query keeps its region's result.

    Kept to check the fused processor against and to measure what fusing saves.
    """

    def attend(self, query, key, value, bias=None):
        owners = self.maps.query_owners(query.shape[2]).to(query.device)
        out = torch.zeros_like(query)
        tokens = self.maps.tokens
        for region in range(self.maps.count):
            span = slice(region * tokens, (region + 1) * tokens)
            mask = None if bias is None else bias[..., span].to(query.dtype)
            result = F.scaled_dot_product_attention(query, key[:, :, span], value[:, :, span], attn_mask=mask)
            out = torch.where((owners == region)[None, None, :, None], result, out)
        return out


def is_cross_attention(name: str) -> bool:
    """diffusers names cross-attention `attn2` in every transformer block of SD UNets."""
    return name.endswith("attn2.processor")


@contextmanager
def regional_attention(denoiser, maps: RegionMaps, processor_class=RegionalAttnProcessor, routes=is_cross_attention):
    """Install a regional processor on every layer `routes` names (cross-attention by default); restore the
    originals afterwards (also on error)."""
    originals = dict(denoiser.attn_processors)
    processor = processor_class(maps)
    denoiser.set_attn_processor({name: processor if routes(name) else original
                                 for name, original in originals.items()})
    try:
        yield
    finally:
        denoiser.set_attn_processor(originals)
