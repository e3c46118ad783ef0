"""Exact analytic detector for the shapes world: "does this region contain an object of colour C (and shape S)?".

We know how the world is drawn (`benchmark.shapes_world`), so no learned model is needed:

1. Colour. Every pixel gets its nearest named object colour. Pixels within CORE_DISTANCE of it are "core"
   pixels of that colour; the backgrounds never come that close (they stay >= ~100 away from every object colour).
2. Extent. Around a core blob, pixels that are at least half-way from the local background (estimated by
   normalised Gaussian smoothing of nearby plain background pixels) towards the blob's observed colour join it.
   This is the 50% contour of a blurred edge, so the silhouette survives blur and soft edges; the observed
   (median) colour makes it tolerant of a colour shift. Seeds hugging another colour's core are edge blends
   (pink over a dark sky blends to purple) and are ignored.
3. Size. The largest such connected component inside the region counts if it has >= MIN_OBJECT_PIXELS_64 pixels
   (scaled with the image), so stray pixels and halo fringes are ignored.
4. Shape. The component is compared by IoU with every shape's silhouette drawn (`shapes_world.shape_mask`) in the
   component's bounding box (and that box grown/shrunk by a pixel); the best few are refined by moving single
   sides, since blur eats thin tips. The best IoU names the shape; it must also reach SHAPE_IOU_MIN.

`validate()` measures the detector against drawn ground truth, clean and perturbed like a small diffusion model's
output (blur, colour shifts, noise); `python -m benchmark.detector --validate` prints the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from benchmark import shapes_world as sw

Region = tuple[int, int, int, int] | np.ndarray

# Named colours must be nearer than this (RGB distance) for a pixel to seed an object. Named colours are >= 105
# apart, so a pixel within 60 has exactly one candidate even after a +/-30 shift; backgrounds are >= ~100 from
# every named colour, leaving ~40 levels of margin for noise and jitter before a background pixel could seed.
CORE_DISTANCE = 60.0
# A pixel farther than this from every named colour is plain background and may inform the local background
# estimate. Between CORE_DISTANCE and this lie blurred edge mixtures, which must not pollute the estimate.
BACKGROUND_DISTANCE = 80.0
# Seeds of a colour closer than this to core pixels of another colour are taken for edge blends (see _components).
# Drawn objects are >= 2 px apart, so a real neighbour loses only its rim, never its inside.
MIXTURE_CLEARANCE_PX = 1
# Background samples also keep this many pixels away from any core pixel: blur (sigma ~0.7) spreads an edge ~2 px.
BACKGROUND_CLEARANCE_PX = 2
# Gaussian sigma (px) of the normalised smoothing that estimates the local background: wider than the texture's
# finest period (so it averages the texture) yet local enough to follow gradients.
BACKGROUND_SIGMA_PX = 3.0
# Where almost no background sample is near (inside large objects) there is no local background estimate.
BACKGROUND_MIN_WEIGHT = 1e-6
# Growing an object's extent (see _components): a pixel is treated as a blend of the object's observed colour and
# the local background; it may lie at most BLEND_RESIDUAL_MAX off that line (noise and background texture; other
# named colours lie >= ~100 off any object-background line) and at most BLEND_ALPHA_MAX along it (a bit brighter
# than the object's median colour is fine, far beyond is something else).
BLEND_RESIDUAL_MAX = 45.0
BLEND_ALPHA_MAX = 1.5
# Without a background estimate (inside large objects) a pixel joins if its nearest named colour is the object's
# and it is within this distance of the object's observed colour.
GROW_DISTANCE = 110.0
# Smallest object: a 12 px star covers ~50 px at 64x64; 20 px rejects specks while keeping small objects.
MIN_OBJECT_PIXELS_64 = 20
# The best-fitting silhouette must overlap the component at least this much: drawn objects score 1.0, mildly
# degraded ones >= ~0.9 (validate), and the closest different silhouettes (circle, square, cross, house) overlap
# each other 0.77-0.83, so a blob scoring below 0.6 on every silhouette is no recognisable shape.
SHAPE_IOU_MIN = 0.6
# Bounding-box adjustments (px, all sides) tried when fitting a silhouette: exact, shrunk and grown by one pixel.
FIT_DELTAS = (0, -1, 1)
# The best FIT_REFINE_SHAPES initial fits are refined by moving single sides a pixel at a time, at most
# FIT_MAX_STEPS moves: enough to restore tips lost to blur (1-2 px on a side), cheap enough for ~1 ms per query.
FIT_REFINE_SHAPES = 3
FIT_MAX_STEPS = 4
FIT_MAX_SHIFT_PX = FIT_MAX_STEPS + max(FIT_DELTAS)  # padding around the component for shifted boxes
# Work on the region's bounding box plus this margin: room for the local background estimate around objects.
WINDOW_MARGIN_PX = 6

# Perturbation mimicking a tiny diffusion model's output, for validate(perturb=True).
PERTURB_BLUR_SIGMA = 0.7  # soft edges
PERTURB_OBJECT_SHIFT = 15  # +/- per channel, per object: slightly wrong object colours
PERTURB_GLOBAL_SHIFT = 8  # +/- per channel, whole image: colour cast
PERTURB_NOISE_SIGMA = 4.0  # per-pixel Gaussian noise

_NAMES: tuple[str, ...] = tuple(sw.COLOURS)
_RGB = np.array([sw.COLOURS[c] for c in _NAMES], dtype=np.float32)  # (K, 3)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Detection:
    colour_found: bool  # an object of the queried colour is in the region
    shape_found: bool | None  # ...and it has the queried shape (None when no shape was asked)
    best_shape: str | None  # silhouette that fits the found object best (None when nothing was found)
    score: float  # IoU of best_shape's fit (0.0 when nothing was found)
    pixels: int  # size of the found object inside the region


@dataclass
class _Window:
    """Per-pixel analysis of the region's neighbourhood, shared by all colour queries on it."""
    pixels: np.ndarray  # float32 (h, w, 3)
    region: np.ndarray  # bool (h, w)
    dist2: np.ndarray  # float32 (h, w, K): squared distance to each named colour
    nearest: np.ndarray  # int (h, w): index of the nearest named colour
    core: np.ndarray  # bool (h, w): within CORE_DISTANCE of the nearest named colour
    min_pixels: int
    origin: tuple[int, int]  # (y0, x0) of the window in the image
    background: np.ndarray | None = None  # float32 (h, w, 3), NaN where unknown; computed on first need


def _as_array(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return image


def _region_mask(region: Region, height: int, width: int) -> np.ndarray:
    """Bool (H, W) mask of a box (x0, y0, x1, y1; clipped to the image) or a bool mask."""
    if isinstance(region, np.ndarray) and region.ndim == 2:
        if region.shape != (height, width):
            raise ValueError(f"region mask {region.shape} does not match image {(height, width)}")
        return region.astype(bool, copy=False)
    x0, y0, x1, y1 = (int(round(float(v))) for v in region)
    mask = np.zeros((height, width), dtype=bool)
    mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return mask


def _window(image: np.ndarray, region: Region) -> _Window | None:
    """Analyse the region's bounding box plus a margin; None if the region is empty."""
    height, width = image.shape[:2]
    full = _region_mask(region, height, width)
    rows, cols = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
    if rows.size == 0:
        return None
    y0, y1 = max(rows[0] - WINDOW_MARGIN_PX, 0), min(rows[-1] + 1 + WINDOW_MARGIN_PX, height)
    x0, x1 = max(cols[0] - WINDOW_MARGIN_PX, 0), min(cols[-1] + 1 + WINDOW_MARGIN_PX, width)
    pixels = image[y0:y1, x0:x1].astype(np.float32)
    flat = pixels.reshape(-1, 3)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2 as one matrix product (broadcasting over RGB is several times slower).
    dist2 = (flat * flat).sum(axis=1, keepdims=True) - 2 * flat @ _RGB.T + (_RGB * _RGB).sum(axis=1)
    dist2 = np.maximum(dist2, 0).reshape(pixels.shape[0], pixels.shape[1], len(_NAMES))
    nearest = dist2.argmin(axis=2)
    core = np.take_along_axis(dist2, nearest[..., None], axis=2)[..., 0] < CORE_DISTANCE**2
    scale = min(height, width) / sw.REFERENCE_SIZE
    min_pixels = max(4, round(MIN_OBJECT_PIXELS_64 * scale * scale))
    return _Window(pixels, full[y0:y1, x0:x1], dist2, nearest, core, min_pixels, (int(y0), int(x0)))


@lru_cache(maxsize=256)
def _smoothing_matrix(n: int) -> np.ndarray:
    """(n, n) Gaussian smoothing matrix, zero outside the window: a matrix product is far cheaper than
    scipy's filters on these small windows."""
    i = np.arange(n, dtype=np.float32)
    return np.exp(-(i[:, None] - i[None, :]) ** 2 / (2 * BACKGROUND_SIGMA_PX**2)) / (
        math.sqrt(2 * math.pi) * BACKGROUND_SIGMA_PX)


def _background(win: _Window) -> np.ndarray:
    """Local background colour per pixel (NaN where no plain background pixel is near), cached on the window.

    Normalised convolution: Gaussian-smoothed (colour x weight) over smoothed weight, where the weight marks
    plain background pixels clear of every object's core."""
    if win.background is None:
        plain = win.dist2.min(axis=2) > BACKGROUND_DISTANCE**2
        near_core = ndimage.maximum_filter(win.core, size=2 * BACKGROUND_CLEARANCE_PX + 1)
        weight = (plain & ~near_core).astype(np.float32)
        h, w = weight.shape
        stack = np.concatenate([win.pixels * weight[..., None], weight[..., None]], axis=2)  # (h, w, 4)
        rows = (_smoothing_matrix(h) @ stack.reshape(h, w * 4)).reshape(h, w, 4)
        smooth = np.einsum("hwc,wv->hvc", rows, _smoothing_matrix(w))
        total = smooth[..., 3]
        with np.errstate(invalid="ignore", divide="ignore"):
            estimate = smooth[..., :3] / total[..., None]
        estimate[total < BACKGROUND_MIN_WEIGHT] = np.nan
        win.background = estimate
    return win.background


def _components(win: _Window, colour: str) -> list[np.ndarray]:
    """Objects of `colour` in the region: bool (h, w) masks, largest first, each >= the minimum size."""
    k = _NAMES.index(colour)
    seeds = win.core & (win.nearest == k) & win.region
    # A blurred edge between an object and the background can pass for another named colour (pink over the dark
    # night sky blends to purple): such seeds hug the other colour's core, so they are not trusted.
    others = win.core & (win.nearest != k)
    if others.any():
        seeds &= ~ndimage.maximum_filter(others, size=2 * MIXTURE_CLEARANCE_PX + 1)
    if np.count_nonzero(seeds) == 0:
        return []
    observed = np.median(win.pixels[seeds], axis=0)
    background = _background(win)
    known = ~np.isnan(background[..., 0])
    # Where the local background is known, a pixel joins if it is mostly object: a blend
    # alpha * observed + (1 - alpha) * background with alpha >= 1/2 (the 50% contour of a blurred edge). Greys
    # from white over a dark sky lie nearer pink than white, so a nearest-colour rule would lose such rims.
    span = observed - np.where(known[..., None], background, 0)
    offset = win.pixels - np.where(known[..., None], background, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        alpha = (offset * span).sum(axis=2) / (span * span).sum(axis=2)
    residual = np.linalg.norm(offset - alpha[..., None] * span, axis=2)
    blend = known & (alpha >= 0.5) & (alpha <= BLEND_ALPHA_MAX) & (residual < BLEND_RESIDUAL_MAX)
    # Inside large objects (no background near) the nearest colour decides.
    d_object = np.linalg.norm(win.pixels - observed, axis=2)
    d_other = np.sqrt(np.delete(win.dist2, k, axis=2).min(axis=2))
    interior = ~known & (d_object < d_other) & (d_object < GROW_DISTANCE)
    grown = (blend | interior | seeds) & win.region
    labels, _ = ndimage.label(grown, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())
    ids = [i for i in np.unique(labels[seeds]) if sizes[i] >= win.min_pixels]
    ids.sort(key=lambda i: -sizes[i])
    return [labels == i for i in ids]


@lru_cache(maxsize=8192)
def _template(shape: str, width: int, height: int) -> tuple[np.ndarray, int]:
    mask = sw.shape_mask(shape, width, height)
    return mask, int(np.count_nonzero(mask))


class _BoxFit:
    """IoU of silhouettes drawn in boxes near a component's bounding box (box coordinates relative to it)."""

    def __init__(self, mask: np.ndarray):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        self.height, self.width = int(rows[-1] + 1 - rows[0]), int(cols[-1] + 1 - cols[0])
        self.crop = np.pad(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], FIT_MAX_SHIFT_PX)
        self.area = int(np.count_nonzero(self.crop))

    def iou(self, shape: str, box: tuple[int, int, int, int]) -> float:
        """IoU with `shape` drawn in `box` (x0, y0, x1, y1); boxes outside the shift limit score -1."""
        x0, y0, x1, y1 = (v + FIT_MAX_SHIFT_PX for v in box)
        if x1 - x0 < 1 or y1 - y0 < 1 or min(x0, y0) < 0 or x1 > self.crop.shape[1] or y1 > self.crop.shape[0]:
            return -1.0
        template, template_area = _template(shape, x1 - x0, y1 - y0)
        overlap = int(np.count_nonzero(self.crop[y0:y1, x0:x1] & template))
        return overlap / (self.area + template_area - overlap)

    def refine(self, shape: str, box: tuple[int, int, int, int], iou: float) -> float:
        """Greedy ascent moving one side by one pixel per step (at most FIT_MAX_STEPS steps): blur eats thin tips
        (a triangle's apex, a small star's legs), shrinking the bounding box on some sides only."""
        for _ in range(FIT_MAX_STEPS):
            moves = [box[:side] + (box[side] + step,) + box[side + 1:] for side in range(4) for step in (-1, 1)]
            best_iou, best_box = max((self.iou(shape, m), m) for m in moves)
            if best_iou <= iou:
                break
            iou, box = best_iou, best_box
        return iou


def _fit_shape(mask: np.ndarray) -> tuple[str, float]:
    """Best silhouette for a component and its IoU.

    Every shape is first fitted to the component's bounding box (exact, shrunk and grown by FIT_DELTAS); the
    FIT_REFINE_SHAPES best are then refined side by side, and the highest IoU names the shape.
    """
    fit = _BoxFit(mask)
    initial = []
    for shape in sw.SHAPES:
        boxes = [(-d, -d, fit.width + d, fit.height + d) for d in FIT_DELTAS]
        iou, box = max((fit.iou(shape, b), b) for b in boxes)
        initial.append((iou, shape, box))
    initial.sort(reverse=True)
    refined = [(fit.refine(shape, box, iou), shape) for iou, shape, box in initial[:FIT_REFINE_SHAPES]]
    best_iou, best_shape = max(refined)
    return best_shape, best_iou


def detect(image: np.ndarray | Image.Image, region: Region, colour: str, shape: str | None = None) -> Detection:
    """Does `region` (a box (x0, y0, x1, y1) or a bool HxW mask) contain an object of `colour` (and `shape`)?

    `image` is RGB on the 0-255 scale (uint8 HxWx3 or a PIL image). The largest object of that colour in the
    region is judged; see the module docstring for the method.
    """
    if colour not in sw.COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {_NAMES}")
    if shape is not None and shape not in sw.SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {sw.SHAPES}")
    win = _window(_as_array(image), region)
    found = [] if win is None else _components(win, colour)
    if not found:
        return Detection(False, None if shape is None else False, None, 0.0, 0)
    best_shape, iou = _fit_shape(found[0])
    shape_found = None if shape is None else (best_shape == shape and iou >= SHAPE_IOU_MIN)
    return Detection(True, shape_found, best_shape, float(iou), int(np.count_nonzero(found[0])))


def object_mask(image: np.ndarray | Image.Image, region: Region, colour: str) -> np.ndarray:
    """Bool (H, W) mask of the object `detect` judges: the largest object of `colour` inside `region`, as the
    pixels of its grown extent (module docstring, steps 1-3). All False when no such object is found.

    The metrics use it to tell the new object from the background around it inside a rough edit mask.
    """
    if colour not in sw.COLOURS:
        raise ValueError(f"unknown colour {colour!r}; known: {_NAMES}")
    pixels = _as_array(image)
    mask = np.zeros(pixels.shape[:2], dtype=bool)
    win = _window(pixels, region)
    found = [] if win is None else _components(win, colour)
    if found:
        y0, x0 = win.origin
        height, width = found[0].shape
        mask[y0:y0 + height, x0:x0 + width] = found[0]
    return mask


def classify(image: np.ndarray | Image.Image, region: Region) -> list[tuple[str, str, float]]:
    """Every object in the region as (colour, best shape, IoU), largest first (for reports)."""
    win = _window(_as_array(image), region)
    if win is None:
        return []
    objects = []
    for colour in _NAMES:
        for mask in _components(win, colour):
            shape, iou = _fit_shape(mask)
            objects.append((int(np.count_nonzero(mask)), colour, shape, float(iou)))
    objects.sort(key=lambda o: -o[0])
    return [(colour, shape, iou) for _, colour, shape, iou in objects]


# --------------------------------------------------------------------------------------------------------------
# Self-validation on drawn ground truth.


def perturb_image(image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Degrade a drawn scene the way a small diffusion model's output differs from the drawing: each object's
    colour shifted a little, a global colour cast, Gaussian blur (soft edges) and per-pixel noise."""
    out = image.astype(np.float32)
    for mask in masks:
        out[mask] += rng.uniform(-PERTURB_OBJECT_SHIFT, PERTURB_OBJECT_SHIFT, size=3).astype(np.float32)
    out += rng.uniform(-PERTURB_GLOBAL_SHIFT, PERTURB_GLOBAL_SHIFT, size=3).astype(np.float32)
    out = ndimage.gaussian_filter(out, sigma=(PERTURB_BLUR_SIGMA, PERTURB_BLUR_SIGMA, 0))
    out += rng.normal(0, PERTURB_NOISE_SIGMA, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _other(rng: np.random.Generator, options: tuple[str, ...], exclude: str) -> str:
    choices = [o for o in options if o != exclude]
    return choices[int(rng.integers(len(choices)))]


def validate(n: int = 1000, seed: int = 0, size: int = 64, perturb: bool = False) -> dict:
    """Measure the detector on `n` sampled scenes (split "any"), querying each object in its own box.

    - colour_recall: its true colour is found; colour_specificity: a random wrong colour is not;
    - shape_recall: true colour + true shape is found; shape_specificity: true colour + a wrong shape is not;
    - background_specificity: a random colour is not found in a random edit-sized box of the bare background;
    - colour_accuracy / shape_accuracy: the mean of the corresponding recall and specificity.
    """
    rng = np.random.default_rng(seed)
    counts = dict(objects=0, colour_hit=0, colour_reject=0, shape_hit=0, shape_reject=0, background_reject=0)
    confusions: dict[str, int] = {}
    for _ in range(n):
        scene = sw.sample_scene(rng, size, split="any")
        image = perturb_image(scene.image, scene.masks, rng) if perturb else scene.image
        for obj in scene.objects:
            counts["objects"] += 1
            hit = detect(image, obj.box, obj.colour, obj.shape)
            counts["colour_hit"] += hit.colour_found
            counts["shape_hit"] += bool(hit.shape_found)
            if hit.colour_found and not hit.shape_found:
                key = f"{obj.shape}->{hit.best_shape}"
                confusions[key] = confusions.get(key, 0) + 1
            wrong_colour = _other(rng, _NAMES, obj.colour)
            counts["colour_reject"] += not detect(image, obj.box, wrong_colour).colour_found
            # detect() is deterministic, so asking for a wrong shape is answered by the same fit (half the time).
            wrong_shape = _other(rng, sw.SHAPES, obj.shape)
            counts["shape_reject"] += not (hit.colour_found and hit.best_shape == wrong_shape
                                           and hit.score >= SHAPE_IOU_MIN)
        bare = sw.render_background(scene.background, size, rng)
        bare = perturb_image(bare, [], rng) if perturb else bare
        box = sw.random_box(rng, size)
        counts["background_reject"] += not detect(bare, box, _NAMES[int(rng.integers(len(_NAMES)))]).colour_found
    m = max(counts["objects"], 1)
    result = {
        "n_scenes": n, "n_objects": counts["objects"], "size": size, "perturbed": perturb,
        "colour_recall": counts["colour_hit"] / m, "colour_specificity": counts["colour_reject"] / m,
        "shape_recall": counts["shape_hit"] / m, "shape_specificity": counts["shape_reject"] / m,
        "background_specificity": counts["background_reject"] / max(n, 1),
    }
    result["colour_accuracy"] = (result["colour_recall"] + result["colour_specificity"]) / 2
    result["shape_accuracy"] = (result["shape_recall"] + result["shape_specificity"]) / 2
    result["shape_confusions"] = dict(sorted(confusions.items(), key=lambda kv: -kv[1]))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validate", action="store_true", help="measure accuracy on clean and perturbed scenes")
    parser.add_argument("--n", type=int, default=1000, help="scenes per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    if not args.validate:
        parser.print_help()
        return
    for perturbed in (False, True):
        print(json.dumps(validate(args.n, args.seed, args.size, perturbed), indent=1))


if __name__ == "__main__":
    main()
