"""Layers above a change stay as they were: their own pixels move onto the new picture below them.

When a layer is re-edited, removed, hidden or shown, a painting program leaves the layers above alone. So do we
by default: each layer above keeps its own pixels (re-composited over the new picture below through its soft
mask) and its memory is rebuilt from the new stack, the way BCG builds it: its own remembered latents inside its
mask, the new layer below's outside. Regenerating the layers above (running their edits again) is the other,
explicit choice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from memory import LayerRecord
from pipelines import bcg, recomposite
from pipelines.masks import latent_mask

LAYERS_ABOVE = ("keep", "regenerate")


def visible_under(stack: Sequence[LayerRecord]) -> LayerRecord:
    """The topmost visible layer of `stack`: what the next layer is composited over."""
    return [layer for layer in stack if layer.visible][-1]


def restack(record: LayerRecord, old_under: LayerRecord, new_under: LayerRecord,
            trajectory_from_image: Callable) -> LayerRecord:
    """`record` moved from `old_under` onto `new_under`, its own pixels and prompt unchanged.

    `trajectory_from_image(image, record) -> (trajectory, schedule)` rebuilds the memory when the layer and the new layer
    below ran different schedules (their latents then sit at different noise levels and cannot be blended).
    """
    if new_under is old_under:
        return record
    image = recomposite(record.image, old_under.image, new_under.image, record.mask)
    if record.schedule == new_under.schedule:
        inside = latent_mask(record.mask, tuple(record.trajectory[0].shape[-2:]), dtype=torch.float32)
        trajectory = tuple(bcg.blend(own.float(), below.float(), inside).to(own.dtype)
                           for own, below in zip(record.trajectory, new_under.trajectory))
        schedule = record.schedule
    else:
        trajectory, schedule = trajectory_from_image(image, record)
    return record.replace(image=image, trajectory=tuple(trajectory), schedule=schedule,
                          info={**record.info, "restacked": True})


def check_layers_above(value: str) -> str:
    if value not in LAYERS_ABOVE:
        raise ValueError(f"layers_above must be one of {LAYERS_ABOVE}, got {value!r}")
    return value
