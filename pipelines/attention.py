"""Multi-Query Disentanglement: each image region's queries listen only to its own layer's prompt.

Regions are built back to front: the background prompt owns every pixel, then each visible earlier
layer takes its mask, then the current edit takes its mask, so later layers occlude earlier ones.
The UNet receives all region prompts concatenated along the token axis; in every cross-attention
layer ONE scaled-dot-product attention call lets a query see only its region's tokens (the
reference code loops one attention call per region over all queries instead). Region
maps are computed once per attention resolution per edit (ROUTING_MODES: by majority, or the
reference code's erode-current/dilate-earlier). The call groups queries by region so each attends
only to its region's tokens: its cost stays about twice plain cross-attention however many layers
pile up, and a region hidden at a resolution costs nothing there.
Self-attention is left alone, so a new object still sees its surroundings. A text mask the denoiser passes
(T5 families: padding tokens, as diffusers' additive bias) is applied to each bucket's keys, so padding never
receives weight either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

# How cross-attention is routed during an edit:
# - "bcg": plain cross-attention to the edit prompt (no routing);
# - "qd-background": two regions: the edit's mask hears the edit prompt, everything else the
#   background (layer 0) prompt;
# - "qd-previous": the reference code's QD: the edit's mask hears the edit prompt, everything else
#   the prompt of the layer just below (the previous visible layer);
# - "mqd": every visible layer's region hears its own prompt (later layers occlude earlier ones).
ATTENTION_MODES = ("bcg", "qd-background", "qd-previous", "mqd")
# Names older projects were saved with -> today's name ("qd" meant the background split).
ATTENTION_ALIASES = {"qd": "qd-background"}
# How a pixel-resolution region map becomes each attention grid's query owners:
# - "majority": each cell goes to the region covering most of it (ties to the later layer), one rule
#   for every layer;
# - "erode-dilate": the reference code's rule: the current edit (the last region) keeps only the cells
#   it covers completely (eroded), each earlier layer takes every cell it touches (dilated).
ROUTING_MODES = ("majority", "erode-dilate")


def owner_map(region_masks: Sequence[np.ndarray]) -> np.ndarray:
    """int64 HxW: for each pixel, the index of the last region whose mask covers it (region 0 = all)."""
    owners = np.zeros(region_masks[0].shape, dtype=np.int64)
    for index, mask in enumerate(region_masks[1:], start=1):
        owners[mask] = index
    return owners


def resolve_attention(attention: str) -> str:
    """Today's name of an attention mode (older projects may hold an alias); unknown names are an error."""
    name = ATTENTION_ALIASES.get(attention, attention)
    if name not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    return name


def downsampled_owners(owners: np.ndarray, size: tuple[int, int], count: int,
                       routing: str = "majority") -> torch.Tensor:
    """Owners on an attention grid [h*w] under a ROUTING_MODES rule; the last region is the current edit."""
    if routing not in ROUTING_MODES:
        raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
    one_hot = F.one_hot(torch.from_numpy(owners), count).permute(2, 0, 1)[None].float()
    coverage = F.adaptive_avg_pool2d(one_hot, size)[0]  # [count, h, w]: share of each cell per region
    if routing == "majority":
        later_first = coverage.flip(0).argmax(0)  # argmax picks the first maximum: flip so the later layer wins
        return (count - 1 - later_first).flatten()
    grid = torch.zeros(size, dtype=torch.int64)
    for region in range(1, count - 1):  # earlier layers, back to front: every cell they touch
        grid[coverage[region] > 0] = region
    if count > 1:  # the current edit: only cells it fills (float sums of ones divide back to exactly 1)
        grid[coverage[count - 1] >= 1.0 - 1e-6] = count - 1
    return grid.flatten()


class RegionMaps:
    """Which prompt tokens each query may attend to, per attention resolution, built once per edit."""

    def __init__(self, owners: np.ndarray, count: int, tokens_per_region: int, latent_size: tuple[int, int],
                 grids: dict[int, tuple[int, int]] | None = None, routing: str = "majority"):
        if routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {routing!r}")
        self.owners, self.count, self.tokens = owners, count, tokens_per_region
        self.latent_size, self.routing = latent_size, routing
        # query count -> (h, w) of each cross-attention layer; a model family gives its own (a UNet's by default)
        self.grids = attention_grids(latent_size) if grids is None else grids
        self._owners: dict[int, torch.Tensor] = {}
        self._cache: dict[int, torch.Tensor] = {}
        self._buckets: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_masks(cls, region_masks: Sequence[np.ndarray], tokens_per_region: int, latent_size: tuple[int, int],
                   grids: dict[int, tuple[int, int]] | None = None, routing: str = "majority"):
        return cls(owner_map(region_masks), len(region_masks), tokens_per_region, latent_size, grids, routing)

    def query_owners(self, query_length: int) -> torch.Tensor:
        """Region index of every query token of an attention layer with `query_length` queries."""
        if query_length not in self.grids:
            raise ValueError(f"no attention grid has {query_length} queries for latents of {self.latent_size}")
        if query_length not in self._owners:
            self._owners[query_length] = downsampled_owners(self.owners, self.grids[query_length], self.count,
                                                            self.routing)
        return self._owners[query_length]

    def allowed(self, query_length: int, device: torch.device) -> torch.Tensor:
        """bool [1, 1, Q, regions * tokens]: True where a query may attend to a key token."""
        if query_length not in self._cache:
            key_owner = torch.arange(self.count).repeat_interleave(self.tokens)
            allowed = self.query_owners(query_length)[:, None] == key_owner[None, :]
            self._cache[query_length] = allowed[None, None]
        return self._cache[query_length].to(device)

    def buckets(self, query_length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries grouped by region into equal-size buckets, for attention without a mask.

        Returns (region [G]: the region whose tokens bucket g attends to; slots [G, S]: the query indices
        in each bucket, padded with query 0; position [Q]: where each query's result lands in the
        flattened [G * S] output). S = ceil(Q / regions owning a query here), and a region fills
        ceil(its queries / S) buckets, so G <= 2 x those regions and G x S < 2 Q: attention costs at most
        about twice plain cross-attention however many layers are piled up, and a region hidden at this
        grid (no query) gets no bucket at all.
        """
        if query_length not in self._buckets:
            owners = self.query_owners(query_length)
            present = torch.unique(owners)  # sorted
            size = math.ceil(query_length / len(present))
            regions, slots = [], []
            position = torch.empty(query_length, dtype=torch.int64)
            for region in present.tolist():
                members = torch.nonzero(owners == region).flatten()
                for start in range(0, len(members), size):
                    chunk = members[start:start + size]
                    position[chunk] = len(slots) * size + torch.arange(len(chunk))
                    regions.append(region)
                    slots.append(F.pad(chunk, (0, size - len(chunk))))
            self._buckets[query_length] = (torch.tensor(regions), torch.stack(slots), position)
        return tuple(t.to(device) for t in self._buckets[query_length])


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
    """A boolean region mask alone, or with a text bias: the bias where allowed, -inf elsewhere (for processors
    that attend over all regions' tokens with a mask, as training/regional.py's)."""
    if bias is None:
        return allowed
    return torch.where(allowed, bias.to(dtype), torch.tensor(float("-inf"), dtype=dtype, device=bias.device))


class RegionalAttnProcessor(RegionalProcessorBase):
    """MQD in one fused call: queries grouped by region (RegionMaps.buckets), each bucket attending to
    its own region's prompt tokens only, in one scaled-dot-product attention call without a mask.

    The same result as one attention over all prompts' tokens with a region mask (masked tokens get
    zero weight), at the cost of about two plain cross-attentions instead of one per region. A text mask
    (`bias`) is sliced the same way: each bucket gets its region's tokens' bias as the call's mask.
    """

    def __init__(self, maps: RegionMaps):
        super().__init__(maps)
        self._bucket_keys: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def attend(self, query, key, value, bias=None):
        batch, heads, length, dim = query.shape
        regions, slots, position = self.maps.buckets(length, query.device)
        cached = self._bucket_keys.get((id(key), length))
        if cached is None or cached[0] is not key:  # keys are cached per layer, so this runs once per edit
            tokens = self.maps.tokens
            per_region = (batch, heads, self.maps.count, tokens, key.shape[-1])
            cached = (key, *(t.view(per_region)[:, :, regions].flatten(1, 2) for t in (key, value)))
            self._bucket_keys[(id(key), length)] = cached
        grouped = query[:, :, slots].flatten(1, 2)  # [B, heads * G, S, dim]
        mask = None
        if bias is not None:  # [B, 1, 1, regions * tokens] -> [B, heads * G, 1, tokens], ordered as `grouped`
            per_bucket = bias.view(batch, self.maps.count, self.maps.tokens)[:, regions].to(query.dtype)
            mask = per_bucket[:, None, :, None].expand(batch, heads, -1, 1, -1).flatten(1, 2)
        out = F.scaled_dot_product_attention(grouped, cached[1], cached[2], attn_mask=mask)
        return out.view(batch, heads, -1, out.shape[-1])[:, :, position]


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
    processor = processor_class(maps)
    routed = [(layer, layer.processor) for name, layer in attention_layers(denoiser) if routes(f"{name}.processor")]
    for layer, _ in routed:
        layer.set_processor(processor)
    try:
        yield
    finally:
        for layer, original in routed:
            layer.set_processor(original)


def attention_layers(denoiser) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every attention layer of `denoiser`, found once and kept on it: diffusers'
    `attn_processors` walks the whole module tree on every call, a visible share of a few-step edit."""
    cached = denoiser.__dict__.get("_layered_attention_layers")
    if cached is None:
        cached = [(name, module) for name, module in denoiser.named_modules() if hasattr(module, "set_processor")]
        denoiser.__dict__["_layered_attention_layers"] = cached
    return cached
