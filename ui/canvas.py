"""Pure helpers between the image and the canvas: the integer upscale, strokes back to image masks, thumbnails.

The canvas shows the image upscaled by an integer factor (nearest neighbour), so a 64x64 image from the
embedded model is comfortable to paint on; a stroke is mapped back to image pixels by a nearest-neighbour
resize (an image pixel is in the mask when the stroke covers its centre). No gradio here: values in, values out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CANVAS_TARGET = 512  # px: small images are shown upscaled by an integer factor to about this size
THUMBNAIL_TARGET = 128


def display_scale(size: tuple[int, int]) -> int:
    """The integer factor the canvas shows an image of `size` at."""
    return max(1, CANVAS_TARGET // max(size))


def brush_size(scale: int) -> int:
    """The brush (and eraser) radius in canvas px: about 2 image px, at least 12 screen-sized px."""
    return max(12, 2 * scale)


def upscale(image, factor: int) -> np.ndarray:
    pixels = np.asarray(image)
    return pixels if factor == 1 else pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def canvas_value(image) -> dict | None:
    """The ImageEditor value showing `image` (upscaled, nearest) with no strokes on it."""
    if image is None:
        return None
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    shown = upscale(pixels, display_scale((pixels.shape[1], pixels.shape[0])))
    return {"background": shown, "layers": [], "composite": shown}


def painted_area(editor_value) -> np.ndarray | None:
    """Where the user painted on the canvas (alpha > 0 in any drawn layer), at canvas resolution."""
    if not editor_value:
        return None
    painted = None
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        pixels = np.asarray(layer)
        if pixels.ndim == 3 and pixels.shape[2] in (2, 4):
            alpha = pixels[..., -1] > 0
        elif pixels.ndim == 3:
            alpha = pixels.any(axis=2)
        else:
            alpha = pixels > 0
        if painted is not None and alpha.shape != painted.shape:  # layers are canvas-sized; be lenient
            alpha = np.asarray(Image.fromarray(alpha).resize(painted.shape[::-1], Image.NEAREST))
        painted = alpha if painted is None else painted | alpha
    return painted if painted is not None and painted.any() else None


def mask_from_canvas(editor_value, size: tuple[int, int], mode: str = "brush", box=None):
    """The mask (bool HxW array of image `size`) or box (x0, y0, x1, y1) the controls describe.

    brush: the painted area resized to the image (nearest); stroke box: the bounding box of the
    painted area in image pixels; box: the numbers typed in. None when nothing was painted.
    """
    width, height = size
    if mode == "box":
        if box is None or any(value is None for value in box):
            raise ValueError("box mode needs all four numbers x0, y0, x1, y1 (image pixels, x horizontal)")
        return tuple(round(float(value)) for value in box)
    painted = painted_area(editor_value)
    if painted is None:
        return None
    if mode == "stroke box":
        rows, cols = np.nonzero(painted)
        sy, sx = painted.shape[0] / height, painted.shape[1] / width
        return (int(cols.min() // sx), int(rows.min() // sy),
                int(-(-(cols.max() + 1) // sx)), int(-(-(rows.max() + 1) // sy)))
    if mode != "brush":
        raise ValueError(f"unknown mask mode {mode!r}")
    small = Image.fromarray(painted.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    mask = np.asarray(small) > 127
    if not mask.any():
        raise ValueError("the stroke is too thin to cover the centre of any image pixel: paint a wider stroke")
    return mask


def layer_caption(index: int, layer) -> str:
    hidden = "" if layer.visible else " (hidden)"
    return f"{index}: {layer.prompt or '(no prompt)'}{hidden}"


def layer_thumbnail(layer) -> np.ndarray:
    """The image after this layer; for an edit, what lies outside its mask is dimmed."""
    pixels = np.asarray(layer.image)
    if layer.kind == "edit":
        inside = np.asarray(layer.user_mask)[..., None] > 0
        pixels = np.where(inside, pixels, (pixels * 0.35).astype(np.uint8))
    factor = max(1, THUMBNAIL_TARGET // max(pixels.shape[:2]))
    return upscale(pixels, factor)
