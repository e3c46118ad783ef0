"""The "shapes world": procedurally drawn scenes with captions and exact ground truth.

This module is the single source of truth for how the world looks: the named object colours, the shape
silhouettes, the textured backgrounds, how scenes are sampled and captioned, and which (colour, shape,
background) triples are held out of training. The training data loop, the benchmark and the exact detector
(`benchmark.detector`) all draw through the functions here, so they can never disagree.

Conventions
- Images are ``uint8`` arrays of shape (H, W, 3), RGB.
- A box is ``(x0, y0, x1, y1)`` in pixels, x horizontal, x1/y1 exclusive.
- ``size`` is an int (square image) or a ``(width, height)`` tuple.
- Everything random is drawn from the ``np.random.Generator`` passed in, so a seed fixes a scene.
- Shapes are stretched to fill the box they are drawn into: a shape's drawn pixels touch all four sides of its
  box. Sampled scenes give each shape its natural aspect ratio (`SHAPE_ASPECT`); the detector relies on the
  filling property to fit templates to a component's bounding box.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]
Size = int | tuple[int, int]

# --------------------------------------------------------------------------------------------------------------
# Object colours: saturated, far from each other (min pairwise RGB distance ~105) and from every background
# (min distance ~100, checked in tests), so nearest-colour classification is unambiguous even after blur/jitter.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35),
    "orange": (255, 140, 0),
    "yellow": (250, 235, 45),
    "green": (30, 200, 70),
    "blue": (35, 85, 240),
    "purple": (150, 50, 210),
    "pink": (255, 120, 205),
    "white": (248, 248, 248),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "house", "moon", "cross")

BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "sea", "sand", "night", "brick")

# Object sizes at 64 px (longer side of the box); scaled linearly with the shorter image side.
REFERENCE_SIZE = 64
OBJECT_MIN_PX = 12
OBJECT_MAX_PX = 28
# Boxes of different objects are at least this far apart, so their pixels never touch, even after mild blur.
OBJECT_GAP_PX = 2
DEFAULT_N_OBJECTS = (1, 3)
# Candidate positions tried per object size before shrinking it by SHRINK_STEP_PX (drawn in one vectorised batch).
PLACEMENT_CANDIDATES = 24
SHRINK_STEP_PX = 4

# Held-out rule: a stable hash of the triple (independent of Python's randomised hash()) puts ~10% of all
# (colour, shape, background) triples in the held-out split. With this salt every pair of attributes
# (colour+shape, colour+background, shape+background) still occurs in training, and every background has >= 5
# held-out (colour, shape) pairs, so a 3-object held-out scene can always be sampled (tests check both).
HELD_OUT_PERMILLE = 100
HELD_OUT_SALT = "shapes-world-v1"

# Masked-edit evaluation boxes: at least 1/9 of the image area, at most 1/3, aspect between 1:2 and 2:1.
EDIT_BOX_MIN_FRAC = 1 / 9
EDIT_BOX_MAX_FRAC = 1 / 3
EDIT_BOX_MAX_ASPECT = 2.0

SPLITS = ("train", "heldout", "any")


@dataclass(frozen=True)
class SceneObject:
    colour: str
    shape: str
    box: Box


@dataclass
class Scene:
    background: str
    objects: list[SceneObject]
    caption: str
    image: np.ndarray  # uint8 (H, W, 3)
    masks: list[np.ndarray]  # bool (H, W) per object: its visible pixels, same order as objects


def _wh(size: Size) -> tuple[int, int]:
    """(width, height) from an int or a (width, height) tuple."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    width, height = size
    return int(width), int(height)


# --------------------------------------------------------------------------------------------------------------
# Shapes: each is a polygon in natural units (or None for the circle, drawn as an ellipse). They are normalised
# to the unit square at import; the natural width/height ratio is kept in SHAPE_ASPECT for sampling.


def _star_points(n_points: int = 5, inner_ratio: float = 0.45) -> np.ndarray:
    """A regular star, one tip up; inner_ratio 0.45 (fatter than the classic 0.38) keeps arms >= 2 px at 12 px."""
    angles = -math.pi / 2 + np.arange(2 * n_points) * math.pi / n_points
    radii = np.where(np.arange(2 * n_points) % 2 == 0, 1.0, inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart_points(n: int = 48) -> np.ndarray:
    """The classic parametric heart curve (y pointing down)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], axis=1)


def _moon_points(offset: float = 0.55, inner_radius: float = 0.85, n: int = 24) -> np.ndarray:
    """A crescent opening to the right: the unit disc minus a disc shifted right by `offset`."""
    # Intersection of x^2+y^2=1 and (x-offset)^2+y^2=inner_radius^2.
    xi = (1 + offset**2 - inner_radius**2) / (2 * offset)
    yi = math.sqrt(1 - xi**2)
    # Outer arc from one tip round the left side (angle pi) to the other, then back along the inner arc.
    outer = np.linspace(math.atan2(yi, xi), math.atan2(-yi, xi) % (2 * math.pi), n)
    inner = np.linspace(math.atan2(-yi, xi - offset) % (2 * math.pi), math.atan2(yi, xi - offset), n)
    outer_pts = np.stack([np.cos(outer), np.sin(outer)], axis=1)
    inner_pts = np.stack([offset + inner_radius * np.cos(inner), inner_radius * np.sin(inner)], axis=1)
    return np.concatenate([outer_pts, inner_pts[1:-1]])


def _cross_points(arm: float = 0.38) -> np.ndarray:
    """A plus sign whose arms are `arm` of its width."""
    a, b = (1 - arm) / 2, (1 + arm) / 2
    return np.array([(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)],
                    dtype=float)


_NATURAL_POLYGONS: dict[str, np.ndarray | None] = {
    "circle": None,
    "square": np.array([(0, 0), (1, 0), (1, 1), (0, 1)], dtype=float),
    "triangle": np.array([(0.5, 0), (1, math.sqrt(3) / 2), (0, math.sqrt(3) / 2)]),
    "star": _star_points(),
    "heart": _heart_points(),
    # Pentagon: a 1 x 0.6 body under a roof 0.45 high.
    "house": np.array([(0.5, 0), (1, 0.45), (1, 1.05), (0, 1.05), (0, 0.45)]),
    "moon": _moon_points(),
    "cross": _cross_points(),
}


def _normalise(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - lo) / (hi - lo)


SHAPE_ASPECT: dict[str, float] = {
    name: 1.0 if pts is None else float(np.ptp(pts[:, 0]) / np.ptp(pts[:, 1]))
    for name, pts in _NATURAL_POLYGONS.items()
}
_UNIT_POLYGONS: dict[str, np.ndarray | None] = {
    name: None if pts is None else _normalise(pts) for name, pts in _NATURAL_POLYGONS.items()
}
assert tuple(_UNIT_POLYGONS) == SHAPES


@lru_cache(maxsize=8192)
def shape_mask(shape: str, width: int, height: int) -> np.ndarray:
    """Bool (height, width) silhouette of `shape` stretched to fill the box; it touches all four sides.

    Cached and read-only: the generator and the detector's template fits call this for the same few sizes.
    """
    if shape not in _UNIT_POLYGONS:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    if width < 1 or height < 1:
        raise ValueError(f"empty box {width}x{height}")
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    unit = _UNIT_POLYGONS[shape]
    if unit is None:
        draw.ellipse((0, 0, width - 1, height - 1), fill=255)
    else:
        # Vertices map onto pixel centres 0..w-1; PIL fills boundary pixels, so the extremes are drawn.
        xy = unit * np.array([width - 1, height - 1], dtype=float)
        draw.polygon([tuple(p) for p in xy.tolist()], fill=255)
    mask = np.asarray(canvas) > 0
    mask.flags.writeable = False
    return mask


def draw_object(image: np.ndarray, colour: str, shape: str, box: Box) -> np.ndarray:
    """Draw a flat-coloured shape filling `box` IN PLACE on `image` (uint8 HxWx3); return its bool HxW mask.

    Parts of the box outside the image are clipped, so callers may draw objects that leave the frame.
    """
    rgb = np.asarray(_colour_rgb(colour), dtype=np.uint8)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    local = shape_mask(shape, x1 - x0, y1 - y0)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    mask = np.zeros((height, width), dtype=bool)
    if cx0 < cx1 and cy0 < cy1:
        mask[cy0:cy1, cx0:cx1] = local[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
        image[mask] = rgb
    return mask


def _colour_rgb(colour: str) -> tuple[int, int, int]:
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {tuple(COLOURS)}")
    return COLOURS[colour]


# --------------------------------------------------------------------------------------------------------------
# Backgrounds: a two-colour gradient plus one smooth, regular, low-amplitude texture. All pattern periods are in
# 64-px units and scale with the image, so a 128 px scene is the 64 px scene drawn finer, not a different world.
# Colours are muted (far from every object colour); textures are sinusoids or soft lines/dots with periods
# >= 6 px, so a 4x-downsampling VAE can reconstruct them, but backgrounds are not flat either.


@dataclass(frozen=True)
class _BackgroundStyle:
    start: tuple[int, int, int]  # gradient colour at the top (or left)
    end: tuple[int, int, int]  # gradient colour at the bottom (or right)
    horizontal: bool  # gradient runs left -> right instead of top -> bottom
    texture: str  # a pattern of _texture(), values in [-1, 1] (sinusoids) or [0, 1] (soft lines and dots)
    amplitude: tuple[float, float, float]  # RGB amount added per unit of texture
    period: tuple[float, float]  # (x, y) period of the texture in 64-px units: the range of per-scene offsets


_STYLES: dict[str, _BackgroundStyle] = {
    "sky": _BackgroundStyle((112, 140, 172), (160, 180, 198), False, "clouds", (7, 7, 6), (32, 16)),
    "grass": _BackgroundStyle((116, 128, 70), (86, 102, 54), False, "blades", (6, 7, 4), (6, 24)),
    "sea": _BackgroundStyle((64, 104, 128), (34, 70, 100), False, "waves", (7, 9, 10), (20, 8)),
    "sand": _BackgroundStyle((178, 158, 122), (156, 136, 102), True, "ripples", (8, 7, 5), (10, 32)),
    "night": _BackgroundStyle((18, 22, 48), (42, 44, 80), False, "dots", (46, 46, 40), (16, 32)),
    "brick": _BackgroundStyle((134, 82, 70), (118, 70, 60), False, "mortar", (30, 36, 38), (16, 16)),
}
assert tuple(_STYLES) == BACKGROUNDS

BACKGROUND_BRIGHTNESS_JITTER = 6.0  # +/- levels added to the whole background per scene
NIGHT_DOT_PERIOD = 16.0  # 64-px units between dots of the night sky's fixed lattice
NIGHT_DOT_SIGMA = 0.9
BRICK_ROW = 8.0  # brick height, 64-px units
BRICK_LENGTH = 16.0
MORTAR_SIGMA = 0.8


def _texture(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Texture value at 64-px-unit coordinates x (1, W) and y (H, 1), float32."""
    tau = np.float32(2 * math.pi)
    if name == "clouds":  # soft, gently wavy horizontal bands
        return np.sin(tau * (y / 16 + 0.12 * np.sin(tau * x / 32)))
    if name == "blades":  # vertical blades that sway
        return np.sin(tau * x / 6 + 1.5 * np.sin(tau * y / 24))
    if name == "waves":  # horizontal waves
        return np.sin(tau * (y / 8 + 0.2 * np.sin(tau * x / 20)))
    if name == "ripples":  # diagonal ripples with a slow swell
        return np.sin(tau * (x + 0.6 * y) / 10) * (0.75 + 0.25 * np.sin(tau * y / 32))
    if name == "dots":  # sparse fixed lattice of soft dots, alternate rows shifted by half a period
        rows = y / NIGHT_DOT_PERIOD
        dy = (rows - np.floor(rows) - 0.5) * NIGHT_DOT_PERIOD
        cols = x / NIGHT_DOT_PERIOD + 0.5 * (np.floor(rows) % 2)
        dx = (cols - np.floor(cols) - 0.5) * NIGHT_DOT_PERIOD
        return np.exp(-(dx**2 + dy**2) / (2 * NIGHT_DOT_SIGMA**2))
    if name == "mortar":  # soft mortar lines between staggered bricks
        rows = y / BRICK_ROW
        dy = (rows - np.round(rows)) * BRICK_ROW
        cols = x / BRICK_LENGTH + 0.5 * (np.floor(rows) % 2)
        dx = (cols - np.round(cols)) * BRICK_LENGTH
        return np.maximum(np.exp(-dy**2 / (2 * MORTAR_SIGMA**2)), np.exp(-dx**2 / (2 * MORTAR_SIGMA**2)))
    raise ValueError(f"unknown texture {name!r}")


@lru_cache(maxsize=64)
def _background_fields(name: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cached float32 fields for `name` at this size: the texture times its RGB amplitude on a canvas one texture
    period larger than the image (so any integer offset within a period can be cropped), the gradient (+0.5 for
    rounding), and the period in pixels (x, y). Per scene, rendering is then a crop and two adds."""
    style = _STYLES[name]
    scale = REFERENCE_SIZE / min(width, height)
    period_x, period_y = (max(1, math.ceil(p / scale)) for p in style.period)
    x = ((np.arange(width + period_x, dtype=np.float32) + 0.5) * scale)[None, :]
    y = ((np.arange(height + period_y, dtype=np.float32) + 0.5) * scale)[:, None]
    texture = _texture(style.texture, x, y)[..., None] * np.asarray(style.amplitude, np.float32)
    along = np.linspace(0, 1, width if style.horizontal else height, dtype=np.float32)
    ramp = along[None, :, None] if style.horizontal else along[:, None, None]
    start, end = np.asarray(style.start, np.float32), np.asarray(style.end, np.float32)
    gradient = np.broadcast_to(start + (end - start) * ramp + 0.5, (height, width, 3)).copy()
    for field in (texture, gradient):
        field.flags.writeable = False
    return texture, gradient, period_x, period_y


def render_background(name: str, size: Size = 64, rng: np.random.Generator | None = None) -> np.ndarray:
    """Render background `name` as uint8 (H, W, 3).

    With rng=None it is the canonical background; with an rng the texture is shifted by a random whole-pixel
    offset (within one period) and the overall brightness by up to BACKGROUND_BRIGHTNESS_JITTER, so scenes
    differ while staying smooth. Whole-pixel offsets let the texture be computed once per size and cached.
    """
    if name not in _STYLES:
        raise ValueError(f"unknown background {name!r}; known: {BACKGROUNDS}")
    width, height = _wh(size)
    texture, gradient, period_x, period_y = _background_fields(name, width, height)
    if rng is None:
        ox, oy, brightness = 0, 0, 0.0
    else:
        jitter = rng.random(3)
        ox, oy = int(jitter[0] * period_x), int(jitter[1] * period_y)
        brightness = (2 * jitter[2] - 1) * BACKGROUND_BRIGHTNESS_JITTER
    image = texture[oy:oy + height, ox:ox + width] + gradient
    image += np.float32(brightness)
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Captions and vocabulary.


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_prompt(colour: str, shape: str) -> str:
    """The prompt for one object, as used for a masked edit: "a red star", "an orange moon"."""
    return f"{_article(colour)} {colour} {shape}"


def caption(background: str, objects: list[SceneObject] | tuple[SceneObject, ...]) -> str:
    """ "a red star, a blue house and a white moon on a sea background"; "a grass background" if no objects."""
    scene_bg = f"{_article(background)} {background} background"
    if not objects:
        return scene_bg
    phrases = [object_prompt(o.colour, o.shape) for o in objects]
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{listed} on {scene_bg}"


CAPTION_TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks (a whitespace+punct split)


def vocabulary() -> list[str]:
    """Every token a caption or prompt can contain, in a fixed order (function words, colours, shapes,
    backgrounds), for a word-level tokenizer. Tokens follow CAPTION_TOKEN_PATTERN, so "," is one."""
    return ["a", "an", "and", "on", "background", ","] + list(COLOURS) + list(SHAPES) + list(BACKGROUNDS)


# --------------------------------------------------------------------------------------------------------------
# Held-out split.


def is_held_out(colour: str, shape: str, background: str) -> bool:
    """True for the ~10% of (colour, shape, background) triples reserved for evaluation (stable across runs)."""
    digest = hashlib.sha256(f"{HELD_OUT_SALT}|{colour}|{shape}|{background}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < HELD_OUT_PERMILLE


@lru_cache(maxsize=None)
def _pairs(background: str, split: str) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) pairs an object on `background` may have in `split`, in a fixed order."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    if split == "any":
        return tuple(pairs)
    want_held_out = split == "heldout"
    return tuple(p for p in pairs if is_held_out(p[0], p[1], background) == want_held_out)


# --------------------------------------------------------------------------------------------------------------
# Sampling.


def _object_size_range(width: int, height: int, object_px: tuple[int, int] | None = None) -> tuple[int, int]:
    lo, hi = object_px or (OBJECT_MIN_PX, OBJECT_MAX_PX)
    if not 4 <= lo <= hi <= REFERENCE_SIZE:
        raise ValueError(f"object_px must be (min, max) with 4 <= min <= max <= {REFERENCE_SIZE}, got {object_px}")
    scale = min(width, height) / REFERENCE_SIZE
    return max(4, round(lo * scale)), max(4, round(hi * scale))


def _box_dims(shape: str, longer: int) -> tuple[int, int]:
    """Box (width, height) with the shape's natural aspect and `longer` as its longer side."""
    aspect = SHAPE_ASPECT[shape]
    if aspect >= 1:
        return longer, max(1, round(longer / aspect))
    return max(1, round(longer * aspect)), longer


def _place(rng: np.random.Generator, dims: tuple[int, int], placed: list[Box], width: int, height: int,
           gap: int) -> Box | None:
    """Try PLACEMENT_CANDIDATES random positions at once; return the first clear of `placed` by `gap`, or None."""
    bw, bh = dims
    if bw > width or bh > height:
        return None
    x0 = rng.integers(0, width - bw + 1, size=PLACEMENT_CANDIDATES)
    y0 = rng.integers(0, height - bh + 1, size=PLACEMENT_CANDIDATES)
    ok = np.ones(PLACEMENT_CANDIDATES, dtype=bool)
    for px0, py0, px1, py1 in placed:
        apart = (x0 >= px1 + gap) | (x0 + bw + gap <= px0) | (y0 >= py1 + gap) | (y0 + bh + gap <= py0)
        ok &= apart
    hits = np.flatnonzero(ok)
    if hits.size == 0:
        return None
    i = hits[0]
    return int(x0[i]), int(y0[i]), int(x0[i]) + bw, int(y0[i]) + bh


def _place_all(rng: np.random.Generator, shapes: list[str], width: int, height: int,
               object_px: tuple[int, int] | None = None) -> list[Box]:
    """Non-overlapping boxes for `shapes`: a random size each, shrunk step by step when the image is too full."""
    lo, hi = _object_size_range(width, height, object_px)
    gap = OBJECT_GAP_PX
    while True:  # restarts are rare (only when earlier objects leave no room even at the minimum size)
        longers = rng.integers(lo, hi + 1, size=len(shapes))
        boxes: list[Box] = []
        for shape, longer in zip(shapes, longers):
            box = None
            for size_try in [*range(int(longer), lo, -SHRINK_STEP_PX), lo]:
                box = _place(rng, _box_dims(shape, size_try), boxes, width, height, gap)
                if box is not None:
                    break
            if box is None:
                break
            boxes.append(box)
        if len(boxes) == len(shapes):
            return boxes


def _n_objects(rng: np.random.Generator, n_objects: int | tuple[int, int] | None) -> int:
    if n_objects is None:
        n_objects = DEFAULT_N_OBJECTS
    if isinstance(n_objects, tuple):
        lo, hi = n_objects
        return int(rng.integers(lo, hi + 1))
    return int(n_objects)


def sample_scene(rng: np.random.Generator, size: Size = 64, n_objects: int | tuple[int, int] | None = None,
                 split: str = "train", object_px: tuple[int, int] | None = None,
                 background: str | None = None) -> Scene:
    """Sample a random scene: a background and 1-3 (default) distinct (colour, shape) objects, non-overlapping.

    split="train" never yields a held-out (colour, shape, background) triple; split="heldout" yields only
    held-out triples (for every object); split="any" samples from all triples. n_objects is an int, an
    inclusive (lo, hi) range, or None for DEFAULT_N_OBJECTS. object_px is the (min, max) longer side of an
    object at 64 px, default (OBJECT_MIN_PX, OBJECT_MAX_PX). background: one of BACKGROUNDS (default: drawn
    uniformly).
    """
    width, height = _wh(size)
    n = _n_objects(rng, n_objects)
    if background is None:
        background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    elif background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; known: {BACKGROUNDS}")
    pairs = _pairs(background, split)
    if n > len(pairs):
        raise ValueError(f"{n} distinct objects requested but {background!r} has {len(pairs)} {split} pairs")
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=n, replace=False)]
    boxes = _place_all(rng, [shape for _, shape in chosen], width, height, object_px)
    objects = [SceneObject(colour, shape, box) for (colour, shape), box in zip(chosen, boxes)]
    return render_scene(background, objects, size, rng)


def render_scene(background: str, objects: list[SceneObject] | tuple[SceneObject, ...], size: Size = 64,
                 rng: np.random.Generator | None = None) -> Scene:
    """Draw `objects` in order over `background`; masks are each object's visible pixels (later objects win)."""
    image = render_background(background, size, rng)
    drawn = [draw_object(image, o.colour, o.shape, o.box) for o in objects]
    masks = []
    covered_later = np.zeros(image.shape[:2], dtype=bool)
    for mask in reversed(drawn):
        masks.append(mask & ~covered_later)
        covered_later |= mask
    masks.reverse()
    return Scene(background, list(objects), caption(background, objects), image, masks)


def random_box(rng: np.random.Generator, size: Size = 64, min_frac: float = EDIT_BOX_MIN_FRAC,
               max_frac: float = EDIT_BOX_MAX_FRAC) -> Box:
    """A random box inside the image covering between min_frac and max_frac of its area (masked-edit regions).

    Aspect ratio is between 1:EDIT_BOX_MAX_ASPECT and EDIT_BOX_MAX_ASPECT:1 where the image allows it.
    """
    width, height = _wh(size)
    total = width * height
    min_area = math.ceil(min_frac * total)
    frac = rng.uniform(min_frac, max_frac)
    aspect = math.exp(rng.uniform(-math.log(EDIT_BOX_MAX_ASPECT), math.log(EDIT_BOX_MAX_ASPECT)))
    bw = min(width, max(1, round(math.sqrt(frac * total * aspect))))
    bh = min(height, max(1, math.ceil(frac * total / bw)))
    while bw * bh < min_area:  # clipping to the image made it too small: grow the other side
        if bh < height:
            bh += 1
        else:
            bw += 1
    x0 = int(rng.integers(0, width - bw + 1))
    y0 = int(rng.integers(0, height - bh + 1))
    return x0, y0, x0 + bw, y0 + bh
