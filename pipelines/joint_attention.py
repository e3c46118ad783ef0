"""Multi-Query Disentanglement inside joint attention (SD3, FLUX): one attention over text and image tokens.

In an MM-DiT the prompt is not read through cross-attention: text tokens and image tokens are concatenated and
attend to each other in one attention per block. MQD there is a mask over [every region's prompt tokens, image
tokens] (in the order the model concatenates them: FLUX puts the text first, SD3 last):

- an image token of region r attends to every image token (the picture stays one picture) and to the real
  tokens of prompt r only;
- a real text token of prompt r attends to the real tokens of prompt r and to the image tokens of region r;
- a padding token (T5 pads every prompt to a fixed window) attends to itself only, and no other token ever
  attends to it: padding receives no weight and carries nothing between regions.

Regions come from `pipelines.attention.RegionMaps` (later layers occlude earlier ones) at the transformer's token
grid: FLUX packs 2x2 latent cells into one token, SD3 embeds 2x2 patches, so both grids are the latent halved.
Rows of the batch listed in `plain_rows` (CFG's unconditional half, whose prompt is the null prompt repeated once
per region) attend plainly: every image token hears the first copy, which hears every image token, exactly as the
plain model attends to the null prompt; the other copies are idle.

Because padding is never attended, padding columns that every prompt has can be cut off before the call
(`trim_padding`): the result is the same and the joint sequence is shorter.

One fused scaled-dot-product attention call per block with that boolean mask (on the CPU, three calls that
give the unmasked image-to-image part the flash kernel: `JointProcessorBase.attend_split`): the mask is built once
per edit (it is the same in every block and step) and cached. `JointRegionLoop*` processors compute the same attention
region by region, as a reference for the fused call and for timing.

Setting `plain_blocks` (first, last): that many leading and trailing transformer blocks attend without routing,
every image token hearing the edit's own prompt (what attention="bcg" does everywhere). Published regional-FLUX
recipes blend a base pass for image quality; here the default is (0, 0), MQD in every block, because a plain block
lets the edit's prompt reach every earlier layer's region (measured inside the processor by test_joint_attention:
non-zero weight there, zero in routed blocks) and BCG already keeps the picture outside the edit on the memory.
Whether the first or last blocks need the plain prompt for quality can only be measured on real weights, which this
project cannot load here; a plain block costs the same as a routed one (the same fused call, another mask).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

from .attention import RegionMaps

# PyTorch's CPU flash-attention kernel, which also returns the log-sum-exp (JointProcessorBase.attend_split)
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)

# (leading, trailing) transformer blocks that hear the edit's prompt without routing; see the module docstring.
DEFAULT_PLAIN_BLOCKS = (0, 0)


@dataclass(frozen=True)
class JointRegions:
    """Who attends to whom in one edit's joint attention.

    `maps` gives each image token its region at the token grid `grid` (h, w); the text is `count` prompts of
    `maps.tokens` tokens each, side by side. `text_mask` (bool [B, count * tokens], True on real tokens) marks
    padding; None means every token is real. `plain_rows` are batch rows that attend plainly (see the module).
    """

    maps: RegionMaps
    grid: tuple[int, int]
    text_mask: torch.Tensor | None = None
    plain_rows: tuple[int, ...] = ()

    def __post_init__(self):
        text = self.text_tokens
        if self.text_mask is not None and (self.text_mask.dtype != torch.bool or self.text_mask.ndim != 2
                                           or self.text_mask.shape[1] != text):
            raise ValueError(f"text_mask must be a bool tensor [batch, {text}] (True on real tokens), got "
                             f"{self.text_mask.dtype} {tuple(self.text_mask.shape)}")
        if self.text_mask is not None and not self.text_mask.reshape(-1, self.maps.count, self.maps.tokens).any(-1).all():
            raise ValueError("every region's prompt needs at least one real token in text_mask")
        self.maps.query_owners(self.image_tokens)  # raises when the grid is not one of the maps' grids

    @property
    def text_tokens(self) -> int:
        return self.maps.count * self.maps.tokens

    @property
    def image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def plain(self) -> JointRegions:
        """The same text and rows with every image token owned by the last region (the edit's prompt)."""
        owners = np.full(self.maps.owners.shape, self.maps.count - 1, dtype=np.int64)
        maps = RegionMaps(owners, self.maps.count, self.maps.tokens, self.maps.latent_size, grids=self.maps.grids)
        return JointRegions(maps, self.grid, self.text_mask, self.plain_rows)

    def image_owners(self) -> torch.Tensor:
        return self.maps.query_owners(self.image_tokens)

    def real_tokens(self, rows: int) -> torch.Tensor:
        """bool [rows, T]: the text mask, all True without one; one mask row is shared by every batch row."""
        if self.text_mask is None:
            return torch.ones(rows, self.text_tokens, dtype=torch.bool)
        mask = self.text_mask.cpu()
        if mask.shape[0] not in (1, rows):
            raise ValueError(f"text_mask has {mask.shape[0]} rows for a batch of {rows}")
        return mask.expand(rows, -1)

    def allowed(self, rows: int, text_first: bool) -> torch.Tensor | None:
        """bool [rows, 1, S, S] (True = may attend) in the model's token order; None when nothing is masked."""
        owners = self.image_owners()  # [N]
        text_owner = torch.arange(self.maps.count).repeat_interleave(self.maps.tokens)  # [T]
        real = self.real_tokens(rows)  # [B, T]
        plain = torch.zeros(rows, dtype=torch.bool)
        for row in self.plain_rows:
            if not 0 <= row < rows:
                raise ValueError(f"plain row {row} is outside a batch of {rows}")
            plain[row] = True
        # Plain rows: one prompt copy (region 0) for every image token, and it hears every image token.
        image_region = torch.where(plain[:, None], torch.zeros_like(owners)[None], owners[None])  # [B, N]
        text_hears_image = torch.where(plain[:, None, None], (text_owner == 0)[None, :, None],
                                       text_owner[None, :, None] == owners[None, None, :])  # [B, T, N]
        text_in_use = real & torch.where(plain[:, None], (text_owner == 0)[None], torch.ones_like(real))  # [B, T]
        image_hears_text = (image_region[:, :, None] == text_owner[None, None, :]) & text_in_use[:, None, :]
        same_prompt = text_owner[:, None] == text_owner[None, :]
        text_hears_text = same_prompt[None] & text_in_use[:, None, :] & text_in_use[:, :, None]
        idle = torch.diag_embed(~text_in_use)  # padding and idle copies: themselves only
        text_hears_text = text_hears_text | idle
        text_hears_image = text_hears_image & text_in_use[:, :, None]
        image_hears_image = torch.ones(rows, owners.numel(), owners.numel(), dtype=torch.bool)
        text_rows = torch.cat([text_hears_text, text_hears_image], dim=2)  # keys [text, image]
        image_rows = torch.cat([image_hears_text, image_hears_image], dim=2)
        allowed = torch.cat([text_rows, image_rows], dim=1)  # [B, T + N, T + N], text first
        if allowed.all():
            return None  # one region, no padding: plain attention (and the model's own fast kernel)
        if not text_first:
            order = torch.cat([torch.arange(self.text_tokens, allowed.shape[1]), torch.arange(self.text_tokens)])
            allowed = allowed[:, order][:, :, order]
        return allowed[:, None]


def trim_padding(embeds: torch.Tensor, text_mask: torch.Tensor | None, tokens_per_region: int, count: int):
    """Cut the trailing token columns that are padding in every region's prompt and every row.

    `embeds` [B, count * L, D] and `text_mask` [B, count * L]; returns (embeds, mask, new L). Exact under MQD
    (padding receives no weight and its own result goes nowhere) and for FLUX's rotary text positions, which
    are all zero.
    """
    if text_mask is None:
        return embeds, text_mask, tokens_per_region
    per_region = text_mask.view(text_mask.shape[0], count, tokens_per_region)
    used = per_region.any(0).any(0)  # [L]: real in some row of some region
    keep = int(torch.nonzero(used).max()) + 1 if used.any() else 1
    embeds = embeds.view(embeds.shape[0], count, tokens_per_region, -1)[:, :, :keep].flatten(1, 2)
    return embeds, per_region[:, :, :keep].flatten(1, 2), keep


def flux_text_ids(text_tokens: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's rotary positions of the concatenated prompts: all zero, as FLUX places a lone prompt's tokens.

    So each region's prompt sits where it would alone; the image ids (row, column) are unchanged by MQD.
    """
    return torch.zeros(text_tokens, 3, device=device, dtype=dtype)


def flux_image_ids(grid: tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's rotary positions of the packed image tokens: (0, row, column) per token, row-major."""
    height, width = grid
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------- processors
class JointProcessorBase:
    """Shared plumbing: project text and image tokens, attend jointly under the region mask, project out.

    Subclasses say the model's token order (`text_first`) and how it projects (`project`, `finish`); `attend`
    is the fused call here and the per-region loop in the reference subclasses.
    """

    text_first: bool

    def __init__(self, regions: JointRegions):
        self.regions = regions
        self._allowed: dict[tuple[int, torch.device], torch.Tensor | None] = {}
        self._text_bias: dict[tuple, torch.Tensor] = {}

    def allowed(self, rows: int, device: torch.device) -> torch.Tensor | None:
        key = (rows, device)
        if key not in self._allowed:
            mask = self.regions.allowed(rows, self.text_first)
            self._allowed[key] = None if mask is None else mask.to(device)
        return self._allowed[key]

    def check_lengths(self, text: int, image: int) -> None:
        if text != self.regions.text_tokens or image != self.regions.image_tokens:
            raise ValueError(f"joint attention got {text} text and {image} image tokens; the regions expect "
                             f"{self.regions.text_tokens} and {self.regions.image_tokens}")

    def attend(self, query, key, value) -> torch.Tensor:
        """[B, heads, S, D] -> [B, heads, S, D], all tokens in the model's order."""
        mask = self.allowed(query.shape[0], query.device)
        if mask is None or not (self.split_softmax and query.device.type == "cpu" and _CPU_FLASH is not None):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.attend_split(query, key, value, mask)

    # On the CPU a masked call runs ~7-11% slower than an unmasked one of the same length (measured at 4,387 tokens),
    # though the image tokens (the bulk of the work) are never masked among themselves: every image token hears
    # every image token. `attend_split` gives them the unmasked kernel: image queries
    # attend to image keys unmasked and to text keys under the mask, in two calls whose softmaxes are merged by
    # their log-sum-exp (exact: the two key sets partition the keys); text queries take the masked call. Three
    # calls per block whatever the number of regions. Off elsewhere (GPU kernels take the mask well).
    split_softmax = True

    def attend_split(self, query, key, value, mask) -> torch.Tensor:
        text, image = self.regions.text_tokens, self.regions.image_tokens
        image_at, text_at = (slice(text, None), slice(None, text)) if self.text_first else (slice(None, image),
                                                                                             slice(image, None))
        q_image = query[:, :, image_at]
        out_image, lse_image = _CPU_FLASH(q_image, key[:, :, image_at], value[:, :, image_at])[:2]
        bias = self.text_bias(mask, image_at, text_at, query.dtype)
        out_text, lse_text = _CPU_FLASH(q_image, key[:, :, text_at], value[:, :, text_at], attn_mask=bias)[:2]
        # the text keys' share of each image query's softmax: e^lse_text / (e^lse_image + e^lse_text); finite, as
        # every image token hears at least one real prompt token (JointRegions checks every prompt has one)
        text_share = torch.sigmoid(lse_text - lse_image).unsqueeze(-1).to(query.dtype)
        out = torch.empty_like(query)
        out[:, :, image_at] = torch.lerp(out_image, out_text, text_share)
        out[:, :, text_at] = F.scaled_dot_product_attention(query[:, :, text_at], key, value,
                                                            attn_mask=mask[:, :, text_at])
        return out

    def text_bias(self, mask, image_at, text_at, dtype) -> torch.Tensor:
        """Additive mask (0 / -inf) of image queries over text keys, in the query's dtype as the kernel wants."""
        key = (mask.shape[0], mask.device, dtype)
        if key not in self._text_bias:
            allowed = mask[:, :, image_at, text_at]
            self._text_bias[key] = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
                ~allowed, float("-inf"))
        return self._text_bias[key]


class JointLoopMixin:
    """The reference: each region's queries attend, one attention call per region and row, to the keys they may see.

    No mask is built: the keys each group may see are gathered explicitly, so this checks the fused mask.
    """

    def attend(self, query, key, value):
        regions, text = self.regions, self.regions.text_tokens
        image_owner = regions.image_owners().to(query.device)
        text_owner = torch.arange(regions.maps.count, device=query.device).repeat_interleave(regions.maps.tokens)
        real = regions.real_tokens(query.shape[0]).to(query.device)
        # positions of the text and image tokens in the model's order
        text_at = torch.arange(text, device=query.device) + (0 if self.text_first else regions.image_tokens)
        image_at = torch.arange(regions.image_tokens, device=query.device) + (text if self.text_first else 0)
        out = value.clone()  # padding and idle copies attend to themselves only: their output is their value
        for row in range(query.shape[0]):
            plain = row in regions.plain_rows
            for region in range(regions.maps.count):
                if plain and region > 0:
                    break
                prompt = text_at[(text_owner == region) & real[row]]
                images = image_at if plain else image_at[image_owner == region]
                # the region's image tokens hear its prompt and every image token; its prompt hears its images
                for queries, keys in ((images, torch.cat([prompt, image_at])), (prompt, torch.cat([prompt, images]))):
                    if len(queries) == 0:
                        continue
                    result = F.scaled_dot_product_attention(query[row:row + 1, :, queries], key[row:row + 1, :, keys],
                                                            value[row:row + 1, :, keys])
                    out[row:row + 1, :, queries] = result
        return out


class FluxJointAttnProcessor(JointProcessorBase):
    """MQD for FLUX's FluxAttention, in the dual-stream blocks (text and image streams, `encoder_hidden_states`
    given) and the single-stream blocks (one sequence [text, image] in `hidden_states`). Text first, rotary
    positions applied to the joint sequence as diffusers' FluxAttnProcessor does."""

    text_first = True

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise ValueError("FLUX's MQD processor builds its own mask from the regions; pass no attention_mask")
        dual = encoder_hidden_states is not None
        query, key, value = self.heads(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        if dual:
            text = self.heads(attn, encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                              attn.norm_added_q, attn.norm_added_k)
            query, key, value = (torch.cat([t, x], dim=1) for t, x in zip(text, (query, key, value)))
            text_tokens = encoder_hidden_states.shape[1]
        else:
            text_tokens = self.regions.text_tokens
        self.check_lengths(text_tokens, query.shape[1] - text_tokens)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = self.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        if not dual:
            return out
        text_out, image_out = out.split_with_sizes([text_tokens, out.shape[1] - text_tokens], dim=1)
        image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
        return image_out, attn.to_add_out(text_out.contiguous())

    @staticmethod
    def heads(attn, states, to_q, to_k, to_v, norm_q, norm_k):
        """Projections [B, S, heads, head_dim], query and key normalised."""
        if getattr(attn, "fused_projections", False):
            raise ValueError("MQD reads the separate q/k/v projections; call transformer.unfuse_qkv_projections()")
        q, k, v = (proj(states).unflatten(-1, (-1, attn.head_dim)) for proj in (to_q, to_k, to_v))
        return norm_q(q), norm_k(k), v


class SD3JointAttnProcessor(JointProcessorBase):
    """MQD for SD3/SD3.5's joint attention (`JointTransformerBlock.attn`): image tokens first, then text; the last
    block's text output is not projected (context_pre_only), as in diffusers' JointAttnProcessor2_0."""

    text_first = False

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None:
            raise RuntimeError("SD3's MQD processor belongs on the joint attention (attn), not on image-only attn2")
        if attention_mask is not None:
            raise ValueError("SD3's MQD processor builds its own mask from the regions; pass no attention_mask")
        image_tokens, text_tokens = hidden_states.shape[1], encoder_hidden_states.shape[1]
        self.check_lengths(text_tokens, image_tokens)
        image = self.heads(attn, hidden_states, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
        text = self.heads(attn, encoder_hidden_states, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                          attn.norm_added_q, attn.norm_added_k)
        query, key, value = (torch.cat([x, t], dim=2) for x, t in zip(image, text))
        out = self.attend(query, key, value)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)
        image_out, text_out = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            text_out = attn.to_add_out(text_out)
        return attn.to_out[1](attn.to_out[0](image_out)), text_out

    @staticmethod
    def heads(attn, states, to_q, to_k, to_v, norm_q, norm_k):
        """Projections [B, heads, S, head_dim], query and key normalised where the model normalises them."""
        q, k, v = (proj(states).unflatten(-1, (attn.heads, -1)).transpose(1, 2) for proj in (to_q, to_k, to_v))
        return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v


class FluxJointLoopProcessor(JointLoopMixin, FluxJointAttnProcessor):
    """FLUX MQD computed region by region (the reference)."""


class SD3JointLoopProcessor(JointLoopMixin, SD3JointAttnProcessor):
    """SD3 MQD computed region by region (the reference)."""


# --------------------------------------------------------------------------------------------- installing
def joint_blocks(transformer) -> list[str]:
    """The processor names MQD routes, in the order the blocks run: FLUX's dual-stream then single-stream
    blocks' `attn`; SD3's joint `attn` (SD3.5's image-only `attn2` stays as it is)."""
    names = list(transformer.attn_processors)
    joint = [name for name in names if name.endswith(".attn.processor")]
    if not joint:
        raise ValueError(f"{type(transformer).__name__} has no joint attention blocks to route")
    return joint


def processor_class(transformer, reference: bool = False):
    """The MQD processor for a transformer, read from its class (FLUX or SD3)."""
    name = type(transformer).__name__
    if name.startswith("Flux"):
        return FluxJointLoopProcessor if reference else FluxJointAttnProcessor
    if name.startswith("SD3"):
        return SD3JointLoopProcessor if reference else SD3JointAttnProcessor
    raise ValueError(f"{name} has no joint attention MQD processor; FLUX and SD3 transformers do")


def joint_processors(transformer, regions: JointRegions, plain_blocks: tuple[int, int] = DEFAULT_PLAIN_BLOCKS,
                     processor=None) -> dict:
    """Every attention processor of `transformer` with MQD on its joint attention blocks (the first and last
    `plain_blocks` blocks hear the edit's prompt only), for `set_attn_processor`. `processor` overrides the class
    (e.g. the per-region reference)."""
    lead, trail = plain_blocks
    names = joint_blocks(transformer)
    if lead < 0 or trail < 0 or lead + trail > len(names):
        raise ValueError(f"plain_blocks must be two counts >= 0 summing to at most {len(names)}, got {plain_blocks}")
    cls = processor or processor_class(transformer)
    routed, plain = cls(regions), cls(regions.plain())
    chosen = {name: plain if index < lead or index >= len(names) - trail else routed
              for index, name in enumerate(names)}
    return {name: chosen.get(name, original) for name, original in transformer.attn_processors.items()}


@contextmanager
def joint_regional_attention(transformer, regions: JointRegions, plain_blocks: tuple[int, int] = DEFAULT_PLAIN_BLOCKS,
                             processor=None):
    """Install `joint_processors` for the duration of the block; the original processors come back afterwards,
    also when the body raises."""
    originals = dict(transformer.attn_processors)
    transformer.set_attn_processor(joint_processors(transformer, regions, plain_blocks, processor))
    try:
        yield
    finally:
        transformer.set_attn_processor(originals)

