"""Pixel compositing of a layer over the picture below it, as pure functions of uint8 arrays."""

from __future__ import annotations

import numpy as np


def composite(previous: np.ndarray, decoded: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """Previous pixels where the soft mask is 0 (bit-identical), decoded pixels where it is 1, a blend between."""
    weight = soft_mask[..., None].astype(np.float32)
    mixed = previous.astype(np.float32) * (1.0 - weight) + decoded.astype(np.float32) * weight
    return np.where(weight > 0, np.clip(np.round(mixed), 0, 255), previous).astype(np.uint8)


def recomposite(image: np.ndarray, old_below: np.ndarray, new_below: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """A layer's composite moved onto a new picture below it, keeping the layer's own pixels as they were.

    `image` was composite(old_below, own, w). Its own pixels are not stored, but they need not be: the same
    composite over `new_below` is image + (new_below - old_below) * (1 - w) wherever w > 0, and `new_below` where
    w is 0. Where w is 1, or where the picture below did not change, the result is `image` bit for bit.
    """
    weight = soft_mask[..., None].astype(np.float32)
    shift = (new_below.astype(np.float32) - old_below.astype(np.float32)) * (1.0 - weight)
    moved = np.clip(np.round(image.astype(np.float32) + shift), 0, 255)
    return np.where(weight > 0, moved, new_below).astype(np.uint8)
