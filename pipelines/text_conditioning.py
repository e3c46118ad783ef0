"""TextConditioning: what a denoiser reads from prompts, for every model family (pipelines/families.py), and how it
is stacked for MQD (one prompt per region on the token axis) and CFG (rows on the batch axis) and stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass(frozen=True)
class TextConditioning:
    """What a denoiser reads from prompts: one row per prompt (or per CFG half).

    `attention_mask` marks real tokens (T5 pads every prompt to a fixed window and its padding must receive no
    attention); None means every token counts (CLIP families). `pooled` is a global text embedding (SDXL).
    """

    embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor | None = None  # bool [B, L], True on real tokens
    pooled: torch.Tensor | None = None  # [B, P]

    # How the optional parts are named among a layer record's extra tensors (a prefix marks the negative prompt).
    STORED: ClassVar[dict[str, str]] = {"attention_mask": "prompt_attention_mask", "pooled": "pooled_prompt_embeds"}

    @property
    def tokens(self) -> int:
        return int(self.embeds.shape[1])

    def to(self, device=None, dtype=None) -> TextConditioning:
        """On `device`; embeddings in `dtype` (the token mask stays boolean)."""
        return TextConditioning(
            self.embeds.to(device=device, dtype=dtype),
            None if self.attention_mask is None else self.attention_mask.to(device=device, dtype=torch.bool),
            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype))

    def storage(self, prefix: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(embeds, extra tensors) as a layer record keeps them: fp16 on the CPU, the mask boolean."""
        stored = self.to("cpu", torch.float16)
        extras = {prefix + name: getattr(stored, field) for field, name in self.STORED.items()
                  if getattr(stored, field) is not None}
        return stored.embeds, extras

    @classmethod
    def from_storage(cls, embeds: torch.Tensor, extras, prefix: str = "") -> TextConditioning:
        """The inverse of `storage`: a layer record's prompt embeddings and extra tensors."""
        return cls(embeds, **{field: extras.get(prefix + name) for field, name in cls.STORED.items()})

    def full_mask(self) -> torch.Tensor:
        """The token mask, all True where the family has none."""
        if self.attention_mask is not None:
            return self.attention_mask
        return torch.ones(self.embeds.shape[:2], dtype=torch.bool, device=self.embeds.device)

    @classmethod
    def regions(cls, items: Sequence[TextConditioning]) -> TextConditioning:
        """MQD's conditioning: the region prompts side by side on the token axis.

        A pooled embedding is global (it conditions every pixel), so it cannot be split by region: it is the
        last region's, which is the current edit's prompt. The edit is what this call paints; BCG keeps the rest
        of the picture on the memory, so a global push toward the new object reaches little beyond its mask.
        """
        masked = any(item.attention_mask is not None for item in items)
        return cls(torch.cat([item.embeds for item in items], dim=1),
                   torch.cat([item.full_mask() for item in items], dim=1) if masked else None,
                   items[-1].pooled)

    def repeat_tokens(self, count: int) -> TextConditioning:
        """This prompt `count` times on the token axis (CFG's unconditional half under MQD: plain for every region)."""
        return TextConditioning(self.embeds.repeat(1, count, 1),
                                None if self.attention_mask is None else self.attention_mask.repeat(1, count),
                                self.pooled)

    @classmethod
    def batch(cls, items: Sequence[TextConditioning]) -> TextConditioning:
        """Rows of several conditionings on the batch axis (CFG: [uncond, cond])."""
        masked = any(item.attention_mask is not None for item in items)
        pooled = [item.pooled for item in items]
        return cls(torch.cat([item.embeds for item in items]),
                   torch.cat([item.full_mask() for item in items]) if masked else None,
                   None if any(p is None for p in pooled) else torch.cat(pooled))
