"""Pure helpers between the image and the canvas: the integer upscale, strokes back to image masks, the mask
outline, the layer thumbnails and the photo's crop or fit. No gradio here: values in, values out.

The canvas shows the image upscaled by an integer factor (nearest neighbour), so a 64x64 image from the
embedded model is comfortable to paint on. Strokes are mapped back to image pixels; the default reading of
a scribble is "here" (`scribble_area`), not the literal stroke.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

CANVAS_TARGET = 512  # px: small images are shown upscaled by an integer factor to about this size
THUMBNAIL_TARGET = 96
# A scribble's area grows by this share of the image's longer side (at least 1 px): a person paints about
# where the object goes, and the edge of a hand-drawn outline is no promise. 2% is 1 px at 64, 10 px at 512.
SCRIBBLE_MARGIN = 0.02
MASK_MODES = ("scribble", "stroke", "stroke box", "box")
TIGHT_OUTLINE = (255, 214, 0)  # solid, just inside the tight mask the layer's composite used
ROUGH_OUTLINE = (255, 45, 117)  # dashed, just outside the rough mask the user painted
PHOTO_FITS = ("crop", "fit")


def display_scale(size: tuple[int, int]) -> int:
    """The integer factor the canvas shows an image of `size` at."""
    return max(1, CANVAS_TARGET // max(size))


def brush_size(scale: int) -> int:
    """The brush (and eraser) radius in canvas px: about 2 image px, at least 12 screen-sized px."""
    return max(12, 2 * scale)


def upscale(image, factor: int) -> np.ndarray:
    pixels = np.asarray(image)
    return pixels if factor == 1 else pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def canvas_value(image, layer=None, strokes: dict | None = None) -> dict | None:
    """The ImageEditor value showing `image` (upscaled, nearest). With an edit `layer`, its masks are outlined:
    the tight mask solid (TIGHT_OUTLINE), the rough mask dashed (ROUGH_OUTLINE). No strokes on it, or those of
    the canvas value `strokes` when it shows an image of the same size (selecting a layer keeps what was painted)."""
    if image is None:
        return None
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    scale = display_scale((pixels.shape[1], pixels.shape[0]))
    shown = upscale(pixels, scale)
    if layer is not None and layer.kind == "edit":
        shown = draw_outlines(shown, np.asarray(layer.mask) > 0.5, np.asarray(layer.user_mask) > 0, scale)
    kept = [paint for paint in (strokes or {}).get("layers") or []
            if paint is not None and np.asarray(paint).shape[:2] == shown.shape[:2]]
    # The editor draws the composite under the layers, so it must not carry the strokes a second time.
    return {"background": shown, "layers": kept, "composite": shown}


def outline(mask: np.ndarray, scale: int, inside: bool) -> np.ndarray:
    """The canvas pixels (bool, `scale` x the mask's size) of a thin line along `mask`'s edge, just inside it
    or just outside. The line is at most a quarter of an image pixel thick when scale >= 4, so it never covers
    an image pixel's centre; at scale 1 it is one pixel wide."""
    big = upscale(mask, scale)
    width = max(1, scale // 4)
    if inside:
        return big & ~ndimage.binary_erosion(big, iterations=width, border_value=1)
    return ndimage.binary_dilation(big, iterations=width) & ~big


def draw_outlines(shown: np.ndarray, tight: np.ndarray, rough: np.ndarray, scale: int) -> np.ndarray:
    """`shown` (the upscaled image) with the tight mask outlined solid and the rough mask dashed."""
    shown = shown.copy()
    rows, cols = np.indices(shown.shape[:2])
    dashes = ((rows + cols) // max(4, 2 * scale)) % 2 == 0
    shown[outline(rough, scale, inside=False) & dashes] = ROUGH_OUTLINE
    if tight.any():
        shown[outline(tight, scale, inside=True)] = TIGHT_OUTLINE
    return shown


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


def scribble_area(painted: np.ndarray, size: tuple[int, int], margin: float = SCRIBBLE_MARGIN) -> np.ndarray:
    """The area a scribble means, as a bool mask of image `size` = (width, height).

    A few rough strokes (a zigzag, a loop, separate dabs) mean "here": the area is the convex hull of everything
    painted (which fills the outline, its holes and the gaps between strokes), grown by `margin` x the longer
    side. The hull rather than a morphological closing: a closing bridges only gaps narrower than its radius,
    and a person's strokes are spaced anyhow. A concave area (an L, a ring) needs the literal stroke mode.
    `painted` is the painted area at canvas resolution (any integer multiple of the image, or the image's).
    """
    width, height = size
    sy, sx = painted.shape[0] / height, painted.shape[1] / width
    edge = painted & ~ndimage.binary_erosion(painted)  # the hull of the edge pixels is the hull of all of them
    rows, cols = np.nonzero(edge)
    corners = np.concatenate([np.stack([cols + dx, rows + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])
    corners = np.unique(corners, axis=0) / np.array([sx, sy])  # in image pixels
    centres = np.stack(np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5), axis=-1).reshape(-1, 2)
    try:
        planes = ConvexHull(corners).equations  # a . p + b <= 0 inside
        inside = (centres @ planes[:, :2].T + planes[:, 2] <= 1e-9).all(axis=1).reshape(height, width)
    except QhullError:  # all corners on one line: cannot happen for pixel squares, kept as a guard
        inside = np.asarray(Image.fromarray(painted).resize((width, height), Image.NEAREST))
    grow = max(1, round(margin * max(width, height)))
    disc = np.hypot(*np.mgrid[-grow:grow + 1, -grow:grow + 1]) <= grow + 0.01
    return ndimage.binary_dilation(inside, structure=disc)


def mask_from_canvas(editor_value, size: tuple[int, int], mode: str = "scribble", box=None):
    """The mask (bool HxW array of image `size`) or box (x0, y0, x1, y1) the controls describe.

    scribble: the area the strokes outline (`scribble_area`); stroke: the painted pixels themselves (an image
    pixel is in when the stroke covers its centre); stroke box: the bounding box of the painted area; box:
    the numbers typed in. None when nothing was painted.
    """
    width, height = size
    if mode == "box":
        if box is None or any(value is None for value in box):
            raise ValueError("box mode needs all four numbers x0, y0, x1, y1 (image pixels, x horizontal)")
        return tuple(round(float(value)) for value in box)
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {MASK_MODES}")
    painted = painted_area(editor_value)
    if painted is None:
        return None
    if mode == "scribble":
        return scribble_area(painted, size)
    if mode == "stroke box":
        rows, cols = np.nonzero(painted)
        sy, sx = painted.shape[0] / height, painted.shape[1] / width
        return (int(cols.min() // sx), int(rows.min() // sy),
                int(-(-(cols.max() + 1) // sx)), int(-(-(rows.max() + 1) // sy)))
    small = Image.fromarray(painted.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)
    mask = np.asarray(small) > 127
    if not mask.any():
        raise ValueError("the stroke is too thin to cover the centre of any image pixel: paint a wider stroke "
                         "(or choose 'area of the scribble')")
    return mask


def layer_name(layer) -> str:
    return layer.prompt or "(no prompt)"


def layer_thumbnail(layer) -> np.ndarray:
    """The image after this layer; for an edit, what lies outside its rough mask is dimmed."""
    pixels = np.asarray(layer.image)
    if layer.kind == "edit":
        inside = np.asarray(layer.user_mask)[..., None] > 0
        pixels = np.where(inside, pixels, (pixels * 0.35).astype(np.uint8))
    factor = max(1, THUMBNAIL_TARGET // max(pixels.shape[:2]))
    return upscale(pixels, factor)


def fit_photo(photo: Image.Image, size: tuple[int, int], how: str) -> tuple[Image.Image, str]:
    """The photo to start from at the model's `size` = (width, height), and a sentence saying what was done.

    crop: the centre of the photo at the target's aspect (what Session.start_from_image does to any photo);
    fit: the whole photo scaled inside the target, the rest filled with its mean colour.
    """
    if how not in PHOTO_FITS:
        raise ValueError(f"photo fit must be one of {PHOTO_FITS}, got {how!r}")
    width, height = size
    same_aspect = photo.width * height == photo.height * width
    if same_aspect:
        return photo, f"the {photo.width}x{photo.height} photo was scaled to {width}x{height}"
    if how == "crop":
        return photo, (f"the {photo.width}x{photo.height} photo was cropped to its centre and scaled to "
                       f"{width}x{height} (choose 'fit' to keep all of it)")
    rgb = photo.convert("RGBA") if photo.mode in ("RGBA", "LA", "PA", "P") else photo
    if rgb.mode == "RGBA":  # transparent parts on white, as Session.start_from_image does
        rgb = Image.alpha_composite(Image.new("RGBA", rgb.size, (255, 255, 255, 255)), rgb)
    rgb = rgb.convert("RGB")
    inner = ImageOps.contain(rgb, size, method=Image.Resampling.LANCZOS)
    fill = tuple(round(v) for v in np.asarray(rgb, dtype=np.float64).reshape(-1, 3).mean(axis=0))
    framed = Image.new("RGB", size, fill)
    framed.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
    return framed, (f"the whole {photo.width}x{photo.height} photo was fitted inside {width}x{height}, "
                    "the rest filled with its mean colour")
