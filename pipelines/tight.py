"""Rough mask in, tight edit out: find where the edit's object forms, keep the old background everywhere else.

A user's mask says where an object may go, not its silhouette. While an edit denoises, every step compares the
latent the UNet proposes with the latent the memory holds for that step (BCG's remembered trajectory). Inside
the rough region, cells the new prompt does not change follow the memory step after step, so their departure
stays small (one step's push); cells where the object forms keep their own latent, so their departure grows
step after step. The cells whose departure reaches a share of the region's largest are the object; that share
rises over the blended steps (the object has room to form early, the mask tightens later). Everywhere else in
the rough region BCG keeps the memory, as it does outside the region.

After decoding, the pixels that changed clearly (Otsu's threshold on the difference to the previous image, never
below PIXEL_CHANGE_FLOOR) and connect to the object's cells are the object's silhouette; grown by the feather
width and feathered outward, it is the soft mask of the pixel composite. It is never larger than the rough region.

No knowledge of any model, prompt or picture world: only latents, the remembered trajectory and pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .masks import dilate, feather

MASK_FITS = ("tight", "whole")  # tight: the object plus a soft edge; whole: repaint the whole rough region
# Share of the region's largest departure that makes a latent cell "object", at the first and the last blended
# step (linear in between). Low early: the object needs room while its layout is decided; higher later.
OBJECT_SHARE_START = 0.1
OBJECT_SHARE_END = 0.4
# Latent cells of room kept around the object cells while blending, so its edge can still move.
OBJECT_ROOM_CELLS = 1
# A departure below this share of the remembered latent's mean magnitude is no signal at all: an edit whose
# prompt changes nothing keeps the whole region on the memory.
SIGNAL_FLOOR = 1e-3
# Pixels that changed by fewer levels (0-255, largest channel) than this are never object, whatever Otsu says.
PIXEL_CHANGE_FLOOR = 12


def departure(proposed: torch.Tensor, remembered: torch.Tensor) -> torch.Tensor:
    """Mean absolute latent difference over channels [1, 1, h, w]: how far this step moved from the memory."""
    return (proposed.float() - remembered.to(proposed.device).float()).abs().mean(dim=1, keepdim=True)


def object_share(step: int, blend_steps: int) -> float:
    """The departure share that counts as object at `step`, rising linearly over the blended steps."""
    progress = step / max(blend_steps - 1, 1)
    return OBJECT_SHARE_START + (OBJECT_SHARE_END - OBJECT_SHARE_START) * min(progress, 1.0)


def object_cells(signal: torch.Tensor, region: torch.Tensor, share: float, floor: float) -> torch.Tensor:
    """bool [1, 1, h, w]: region cells whose signal reaches `share` of the region's largest, and the floor."""
    inside = torch.where(region > 0, signal, torch.zeros_like(signal))
    threshold = max(share * float(inside.max()), floor)
    return (inside >= threshold) & (inside > floor) & (region > 0)


def grow_cells(cells: torch.Tensor, cells_of_room: int) -> torch.Tensor:
    """Dilate a bool cell mask by `cells_of_room` cells (8-neighbourhood)."""
    if cells_of_room <= 0:
        return cells
    size = 2 * cells_of_room + 1
    return F.max_pool2d(cells.float(), size, stride=1, padding=cells_of_room) > 0.5


@dataclass
class ObjectTracker:
    """Per-edit state of the object estimate: the blend mask of each blended step, the object cells so far.

    `region` is the rough region's latent mask (fractions of covered cells, as BCG uses it).
    """

    region: torch.Tensor
    blend_steps: int
    cells: torch.Tensor | None = None  # bool object cells of the latest blended step

    def blend_mask(self, step: int, proposed: torch.Tensor, remembered: torch.Tensor) -> torch.Tensor:
        """The mask BCG blends with at `step`: the region's weights on the object cells (and their room), 0 elsewhere."""
        signal = departure(proposed, remembered)
        floor = SIGNAL_FLOOR * float(remembered.float().abs().mean())
        self.cells = object_cells(signal, self.region, object_share(step, self.blend_steps), floor)
        room = grow_cells(self.cells, OBJECT_ROOM_CELLS)
        return self.region * room.to(self.region.dtype)

    def pixel_cells(self, size: tuple[int, int]) -> np.ndarray:
        """The object cells upsampled to pixels (bool HxW). With no blended step (free_steps_ratio 1) nothing was
        tracked: every cell of the region may seed the silhouette."""
        if self.cells is None:
            return F.interpolate(self.region.float().cpu(), size=size, mode="nearest")[0, 0].numpy() > 0
        return F.interpolate(self.cells.float().cpu(), size=size, mode="nearest")[0, 0].numpy() > 0.5


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of 0-255 values (the split that best separates two groups); 0 for no values."""
    if values.size == 0:
        return 0.0
    counts, edges = np.histogram(values, bins=64, range=(0, 256))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts) / values.size
    mass = np.cumsum(counts * centres) / values.size
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mass[-1] * weight - mass) ** 2 / (weight * (1 - weight))
    return float(centres[np.nanargmax(np.nan_to_num(between, nan=-1.0))])


def object_pixels(decoded: np.ndarray, previous: np.ndarray, region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """bool HxW: the object's silhouette, the clearly changed pixels of `region` that connect to `seeds`.

    Holes are filled (an object's flat interior may match the old background's colour in places).
    """
    change = np.abs(decoded.astype(np.int16) - previous.astype(np.int16)).max(axis=2)
    threshold = max(float(PIXEL_CHANGE_FLOOR), otsu_threshold(change[region]))
    changed = (change > threshold) & region
    labels, _ = ndimage.label(changed, structure=np.ones((3, 3), dtype=bool))
    kept = np.unique(labels[changed & seeds])
    silhouette = np.isin(labels, kept[kept > 0])
    return ndimage.binary_fill_holes(silhouette) & region


def soft_object_mask(silhouette: np.ndarray, region_soft: np.ndarray, feather_px: int) -> np.ndarray:
    """float32 HxW: 1 on the silhouette, ramping to 0 over `feather_px` outside it, and 0 outside the region."""
    if not silhouette.any():
        return np.zeros_like(region_soft, dtype=np.float32)
    # feather() ramps inward from the grown edge: over feather_px + 1 levels the silhouette itself stays at 1
    grown = dilate(silhouette, feather_px)
    return (feather(grown, feather_px + 1) * region_soft).astype(np.float32)
