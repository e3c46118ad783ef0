"""User images -> the RGB uint8 arrays the pipeline works on."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

MAX_INPUT_PIXELS = 64_000_000  # larger inputs are refused rather than risking the machine's memory


def to_pil(image) -> Image.Image:
    """Accept a PIL image or a numpy array (HxW, HxWx3, HxWx4; uint8, uint16 or float in [0, 1])."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, got shape {image.shape}")
    if image.dtype.kind == "f":
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or infinite values")
        image = np.clip(image, 0.0, 1.0) * 255.0
    elif image.dtype == np.uint16:
        image = image / 257.0
    elif image.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, uint16 or float in [0, 1], got {image.dtype}")
    return Image.fromarray(np.round(image).astype(np.uint8))


def to_rgb_array(image, size: tuple[int, int]) -> np.ndarray:
    """RGB uint8 HxWx3 of `size` = (width, height): alpha composited on white, centre-crop, Lanczos resize."""
    picture = to_pil(image)
    if picture.width * picture.height > MAX_INPUT_PIXELS:
        raise ValueError(f"image is {picture.width}x{picture.height}; at most {MAX_INPUT_PIXELS} pixels are accepted")
    if picture.mode in ("I;16", "I;16B", "I;16L", "I"):
        picture = Image.fromarray((np.asarray(picture, dtype=np.float64) / 257.0).clip(0, 255).astype(np.uint8))
    if picture.mode == "P":
        picture = picture.convert("RGBA")
    if picture.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        picture = Image.alpha_composite(white, picture.convert("RGBA"))
    picture = ImageOps.fit(picture.convert("RGB"), size, method=Image.Resampling.LANCZOS)
    return np.asarray(picture, dtype=np.uint8).copy()
