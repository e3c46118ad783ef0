"""Rough user masks -> the masks an edit actually uses.

One rule for every layer (the reference code erodes the current mask and dilates earlier ones; we
do not): binarise -> optional dilation -> optional inward feather. Feathering only ever goes
*inward*, so the soft mask is exactly 0 outside the (dilated) region and the pixel composite keeps
every pixel there bit-identical.

All functions are pure functions of arrays so they are easy to test bit-exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# A rough brush stroke is "in" where it is at least half-painted.
BINARY_THRESHOLD = 0.5


class MaskError(ValueError):
    """A mask that cannot be used; the message says what to fix."""


def box_mask(box: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """A boolean HxW mask of the pixel box (x0, y0, x1, y1); x is horizontal, x1/y1 exclusive.

    The box is clipped to the image; a box with no pixels left inside the image is an error.
    """
    width, height = size
    if len(box) != 4:
        raise MaskError(f"a box is (x0, y0, x1, y1) in pixels; got {tuple(box)!r}")
    if not all(np.isfinite(float(v)) for v in box):
        raise MaskError(f"box coordinates must be finite numbers; got {tuple(box)!r}")
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise MaskError(f"box (x0, y0, x1, y1) needs x1 > x0 and y1 > y0; got {(x0, y0, x1, y1)}")
    x0, x1 = max(0, x0), min(width, x1)
    y0, y1 = max(0, y0), min(height, y1)
    if x1 <= x0 or y1 <= y0:
        raise MaskError(f"box {tuple(box)!r} lies outside the {width}x{height} image")
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def to_binary(mask, size: tuple[int, int]) -> np.ndarray:
    """Turn what a user hands us into a boolean HxW mask of the image `size` = (width, height).

    Accepted: a box (x0, y0, x1, y1) in pixels; a PIL image (mode 1/L/I/F use their values,
    LA/RGBA/PA use alpha, RGB uses luminance); a 2-D numpy array (bool, integer 0-255 or float 0-1)
    or an HxWx{3,4} array (as for PIL). Values are binarised at half their range. A mask of the
    wrong size is an error rather than a silent resize: a mismatch usually means the mask was
    drawn on another image.
    """
    if isinstance(mask, (tuple, list)) and len(mask) == 4 and all(np.isscalar(v) for v in mask):
        return box_mask(mask, size)
    if isinstance(mask, Image.Image):
        array = _pil_mask_values(mask)
    elif isinstance(mask, np.ndarray):
        array = _array_mask_values(mask)
    elif isinstance(mask, torch.Tensor):
        array = _array_mask_values(mask.detach().cpu().numpy())
    else:
        raise MaskError(
            "mask must be a PIL image, a numpy array or a box (x0, y0, x1, y1); "
            f"got {type(mask).__name__}"
        )
    width, height = size
    if array.shape != (height, width):
        raise MaskError(
            f"mask is {array.shape[1]}x{array.shape[0]} (WxH) but the image is {width}x{height}; "
            "resize the mask to the image (nearest-neighbour) or pass a box"
        )
    return array >= BINARY_THRESHOLD


def _pil_mask_values(image: Image.Image) -> np.ndarray:
    """Values in [0, 1] from a PIL mask; alpha wins when the image has one (a drawn layer)."""
    if image.mode in ("RGBA", "LA", "PA"):
        return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0
    if image.mode == "P":
        image = image.convert("RGBA")
        return np.asarray(image.getchannel("A"), dtype=np.float32) / 255.0 * (
            np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        )
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return _array_mask_values(np.asarray(image))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def _array_mask_values(array: np.ndarray) -> np.ndarray:
    """Values in [0, 1] from a numpy mask: bool, 8/16-bit integers by their range, floats as 0-1."""
    if array.ndim == 3 and array.shape[2] in (3, 4):
        if array.shape[2] == 4:
            array = array[..., 3]
        else:
            array = array.mean(axis=2) if array.dtype.kind == "f" else array.max(axis=2)
    if array.ndim != 2:
        raise MaskError(f"mask array must be HxW (or HxWx3/4); got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        if array.min(initial=0) < 0:
            raise MaskError("mask values must be >= 0 (0 = keep, 255 or 1.0 = edit)")
        return array.astype(np.float32) / top
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise MaskError("mask contains NaN or infinite values")
        if array.max(initial=0) > 1.0 + 1e-6 and array.max() <= 255:
            return array.astype(np.float32) / 255.0
        return array.astype(np.float32)
    raise MaskError(f"unsupported mask dtype {array.dtype}")


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a boolean mask by `pixels` (a disc-like 8-neighbourhood), so rough strokes cover the object."""
    if pixels <= 0:
        return mask
    tensor = torch.from_numpy(mask.astype(np.float32))[None, None]
    grown = F.max_pool2d(tensor, kernel_size=2 * pixels + 1, stride=1, padding=pixels)
    return grown[0, 0].numpy() > 0.5


def feather(mask: np.ndarray, pixels: int) -> np.ndarray:
    """A float32 soft mask that ramps from 0 at the mask's edge to 1 at `pixels` inside it.

    The ramp is an inward distance (chessboard metric, from repeated 3x3 erosions): outside the
    mask it is exactly 0, so feathering never touches pixels outside the region.
    """
    soft = mask.astype(np.float32)
    if pixels <= 0 or not mask.any():
        return soft
    inside = torch.from_numpy(soft)[None, None]
    depth = torch.zeros_like(inside)
    for _ in range(pixels):
        depth += inside
        # Erode by one pixel: a pixel stays inside only if all its 8 neighbours are inside;
        # the image border counts as inside so a mask touching the border is not faded there.
        inside = -F.max_pool2d(-F.pad(inside, (1, 1, 1, 1), value=1.0), 3, stride=1)
    return (depth[0, 0] / pixels).clamp(0, 1).numpy()


def refine(binary: np.ndarray, dilation: int = 0, feather_px: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary user mask -> (region, soft): the region edited and the soft mask for compositing."""
    if not binary.any():
        raise MaskError("mask is empty: paint the area to edit (or pass a box)")
    region = dilate(binary, dilation)
    return region, feather(region, feather_px)


def latent_mask(region: np.ndarray, latent_size: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """Area-downsample a pixel mask to a latent grid [1, 1, h, w]; partly covered cells get fractions."""
    tensor = torch.from_numpy(region.astype(np.float32))[None, None]
    small = F.adaptive_avg_pool2d(tensor, latent_size)
    return small.to(device=device, dtype=dtype)


def binary_latent_mask(region: np.ndarray, latent_size: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """Nearest-neighbour resize of the binary pixel mask to a latent grid [1, 1, h, w]: every cell is 0 or 1,
    taken from one pixel of it (torch's "nearest": the cell's top-left pixel), as the reference code does."""
    tensor = torch.from_numpy(region.astype(np.float32))[None, None]
    small = F.interpolate(tensor, size=tuple(latent_size), mode="nearest")
    return small.to(device=device, dtype=dtype)


# How BCG's latent mask is made from the edit's pixel region: "fractional" = latent_mask (area average:
# a cell half inside the region keeps half of the remembered latent), "binary" = binary_latent_mask.
BCG_MASKS = {"fractional": latent_mask, "binary": binary_latent_mask}


def bcg_latent_mask(region: np.ndarray, latent_size: tuple[int, int], kind: str = "fractional", device=None,
                    dtype=None) -> torch.Tensor:
    """The latent mask BCG blends with, made the BCG_MASKS way `kind`."""
    if kind not in BCG_MASKS:
        raise ValueError(f"bcg_mask must be one of {tuple(BCG_MASKS)}, got {kind!r}")
    return BCG_MASKS[kind](region, latent_size, device=device, dtype=dtype)
