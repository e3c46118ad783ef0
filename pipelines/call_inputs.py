"""What a LayeredPipeline call takes and gives back: the edit (EditRegion), the result (LayeredPipelineOutput),
and the checks of the call's settings that need no model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .attention import ROUTING_MODES, resolve_attention
from .text_conditioning import TextConditioning
from .guidance import GUIDANCE_MODES
from .masks import BCG_MASKS
from .tight import MASK_FITS

PRESERVE_MODES = ("pixels", "latents")
# "memory": BCG follows the layer below's stored trajectory; "renoise": the blended-latent baseline
# re-encodes the previous image and noises it to each step (no memory; used for ablations).
BACKGROUND_SOURCES = ("memory", "renoise")
CALLBACK_TENSOR_INPUTS = ("latents",)


@dataclass(frozen=True)
class EditRegion:
    """What an edit needs from the layer below it, as plain arrays and tensors."""

    region: np.ndarray  # bool HxW: where the new content may appear
    soft_mask: np.ndarray  # float32 HxW in [0, 1], 0 outside `region`: pixel composite weights
    previous_image: np.ndarray  # uint8 HxWx3
    previous_trajectory: Sequence[torch.Tensor]  # latent after each step of the layer below
    previous_schedule: tuple  # that trajectory's schedule fingerprint
    background: str = "memory"  # see BACKGROUND_SOURCES
    # MQD: the earlier visible layers, back to front, as (their prompt's TextConditioning, bool HxW mask);
    # the first is the background (its mask is the whole image).
    earlier_regions: Sequence[tuple[TextConditioning, np.ndarray]] = ()
    # "tight": find the object while denoising; BCG and the pixel composite keep the old background inside
    # the region too, apart from a `feather_px` soft edge around the object. "whole": repaint the whole region.
    mask_fit: str = "tight"
    feather_px: int = 2

    def check(self, height: int, width: int) -> None:
        """Refuse an edit whose settings are unknown or whose arrays are not `width`x`height`."""
        if self.background not in BACKGROUND_SOURCES:
            raise ValueError(f"background must be one of {BACKGROUND_SOURCES}, got {self.background!r}")
        if self.mask_fit not in MASK_FITS:
            raise ValueError(f"mask_fit must be one of {MASK_FITS}, got {self.mask_fit!r}")
        expected = (height, width)
        if self.region.shape != expected or self.soft_mask.shape != expected or self.previous_image.shape[:2] != expected:
            raise ValueError(f"edit masks and previous image must be {width}x{height}")


@dataclass
class LayeredPipelineOutput:
    """One layer's result: the image and everything the memory keeps for later edits."""

    image: np.ndarray  # uint8 HxWx3, after the pixel composite
    decoded: np.ndarray  # uint8 HxWx3, the VAE's output before compositing
    trajectory: list[torch.Tensor]  # fp16 CPU, the latent after each step (after blending)
    schedule: tuple
    prompt_embeds: torch.Tensor  # fp16 CPU
    negative_prompt_embeds: torch.Tensor | None  # fp16 CPU, None when CFG was off
    info: dict = field(default_factory=dict)
    # the rest of both prompts' TextConditioning (token masks, pooled embeddings), named as TextConditioning.storage
    extra_tensors: dict = field(default_factory=dict)
    # float32 HxW: the soft mask the edit painted through (the object's when tight); None for a background
    mask: np.ndarray | None = None


def check_settings(num_inference_steps, guidance_scale, free_steps_ratio, preserve, attention, guidance, bcg_mask,
                   region_routing, callback_on_step_end_tensor_inputs) -> None:
    """Clear errors for call settings out of range or unknown (LayeredPipeline.check_inputs checks the rest)."""
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    if not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if not 0.0 <= free_steps_ratio <= 1.0:
        raise ValueError(f"free_steps_ratio must be in [0, 1], got {free_steps_ratio!r}")
    if preserve not in PRESERVE_MODES:
        raise ValueError(f"preserve must be one of {PRESERVE_MODES}, got {preserve!r}")
    unknown = set(callback_on_step_end_tensor_inputs) - set(CALLBACK_TENSOR_INPUTS)
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs may hold {CALLBACK_TENSOR_INPUTS}, got {sorted(unknown)}")
    resolve_attention(attention)  # raises for an unknown mode
    if bcg_mask not in BCG_MASKS:
        raise ValueError(f"bcg_mask must be one of {tuple(BCG_MASKS)}, got {bcg_mask!r}")
    if region_routing not in ROUTING_MODES:
        raise ValueError(f"region_routing must be one of {ROUTING_MODES}, got {region_routing!r}")
    if guidance not in GUIDANCE_MODES:
        raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {guidance!r}")
