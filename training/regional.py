"""Regional-caption training: teach the UNet the routing that MQD edits use at inference.

In a masked edit under MQD, the queries inside the mask see only the edit prompt ("a red star") and the others only
the background prompt ("a grass background"). A model trained only on whole-scene captions has never been asked to
draw from that routing, and in about half of the edits it draws nothing inside the box. So a share of training
samples is conditioned exactly like an edit: region 0 (everything) gets "a <bg> background", and each object gets its
own phrase over a random box around it (sized like an edit box), with the object's own pixels always routed to it.

The routing is the inference one (pipelines.attention: one SDPA call with a boolean mask over the concatenated region
prompts); only the maps differ per sample here, so they are a batch dimension of the mask.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.attention import RegionalProcessorBase, attention_grids, is_cross_attention, with_bias

MAX_REGIONS = 4  # background + up to 3 objects
BOX_MARGIN_PX = 12  # each side of an object's box grows by up to this many pixels (edit boxes are 1/9-1/3 of 64x64)


def region_layout(scene, rng: np.random.Generator, image_size: int) -> tuple[list[str], np.ndarray]:
    """Prompts (background first) and an int64 (H, W) owner map for one scene, as an MQD edit would route it."""
    from .common import world

    sw = world()
    prompts = [sw.caption(scene.background, [])]
    owners = np.zeros((image_size, image_size), dtype=np.int64)
    for index, obj in enumerate(scene.objects, start=1):
        x0, y0, x1, y1 = obj.box
        grow = rng.integers(0, BOX_MARGIN_PX + 1, size=4)
        owners[max(0, y0 - grow[1]):min(image_size, y1 + grow[3]), max(0, x0 - grow[0]):min(image_size, x1 + grow[2])] = index
        prompts.append(sw.object_prompt(obj.colour, obj.shape))
    for index, mask in enumerate(scene.masks, start=1):  # an object's own pixels always listen to its phrase
        owners[mask] = index
    return prompts, owners


def batched_allowed(owners: torch.Tensor, tokens: int, latent_size: int) -> dict[int, torch.Tensor]:
    """query length -> bool [B, 1, Q, MAX_REGIONS * tokens] for every attention resolution of the UNet."""
    one_hot = F.one_hot(owners, MAX_REGIONS).permute(0, 3, 1, 2).float()  # [B, R, H, W]
    key_owner = torch.arange(MAX_REGIONS, device=owners.device).repeat_interleave(tokens)
    allowed = {}
    for length, size in attention_grids((latent_size, latent_size)).items():
        coverage = F.adaptive_avg_pool2d(one_hot, size)  # later regions win ties, as at inference
        query_owner = (MAX_REGIONS - 1 - coverage.flip(1).argmax(1)).flatten(1)  # [B, Q]
        allowed[length] = (query_owner[:, :, None] == key_owner[None, None, :])[:, None]
    return allowed


class BatchRegionalAttnProcessor(RegionalProcessorBase):
    """MQD's fused attention with per-sample region maps, set before each training step (no K/V caching)."""

    def __init__(self):
        super().__init__(maps=None)
        self.allowed: dict[int, torch.Tensor] | None = None

    def keys_values(self, attn, encoder_hidden_states):
        return self.project_keys_values(attn, encoder_hidden_states)  # the prompts change every step

    def attend(self, query, key, value, bias=None):
        allowed = with_bias(self.allowed[query.shape[2]], bias, query.dtype)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed)


def install(unet) -> BatchRegionalAttnProcessor:
    """Put one shared batch-regional processor on every cross-attention layer of the training UNet."""
    processor = BatchRegionalAttnProcessor()
    unet.set_attn_processor({name: processor if is_cross_attention(name) else original
                             for name, original in unet.attn_processors.items()})
    return processor
