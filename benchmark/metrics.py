"""Every benchmark metric, defined once, here.

Image metrics are pure numpy functions of uint8 (H, W, 3) images and bool (H, W) masks, so a test
can check each against a number worked out by hand. A sequential edit run gives:

- `background` : the image before any edit (layer 0);
- `steps[i]`   : the image right after edit i (i = 0 .. n-1);
- `masks[i]`   : edit i's mask as the session used it (its box, at the image's size).

Definitions (all per edit i, so they can be plotted against the edit index):
- background preservation: `psnr` and `max_abs_diff` of steps[i] vs background, outside the union
  of masks[0..i] (the pixels no edit so far was allowed to touch);
- prior-layer preservation: for each earlier edit j < i, the same two numbers of steps[i] vs steps[j]
  inside j's visible region: masks[j] minus masks[j+1..i] (later edits occlude earlier ones);
- edit success (shapes world): the exact detector finds the asked colour, and the asked shape,
  inside masks[i] of steps[i];
- earlier objects, like for like: for each earlier edit j < i whose object was found when it was
  made, the detector is asked the same question about the same region R = j's still-visible region
  after edit i (masks[j] minus masks[j+1..i]) in steps[j] and in steps[i]. `earlier_occluded`: the
  object was findable in steps[j] in masks[j] but not in R (later boxes hide it: no one's fault);
  `earlier_kept`: of those findable in R in steps[j], the share still found in R in steps[i]
  (a perfect editor scores 100%);
- what users see (against the image just before edit i, so per-edit changes are not blamed on earlier
  ones): `background_in_mask_psnr`, the background inside the rough mask away from the detected new
  object, and `seam_score`, how much sharper the rough mask's edge got than the gradient around it;
- CLIP crop score: 100 x cosine similarity between CLIP's embeddings of the crop of masks[i]'s
  bounding box from steps[i] and the edit's text (only with a local CLIP model).
Costs (non-deterministic ones go to costs.json, not results.json):
- UNet evaluations per edit: `layer.info["unet_evals"]` (a CFG step counts 2);
- memory bytes per layer: `layer.nbytes`, every tensor and array the layer record holds;
- wall time per edit: seconds around `Session.edit`, summarised by the median;
- peak memory: the process's peak resident set size, and CUDA's max_memory_allocated when on a GPU.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from benchmark import detector

PEAK = 255.0  # uint8 images
# Background inside a rough mask is judged this far (px, Euclidean) away from the detected new object:
# its anti-aliased rim and a soft edge are part of the object, not background.
OBJECT_CLEARANCE_PX = 3
# The seam score compares the step across a mask's edge with steps up to this many pixels from it.
SEAM_BAND_PX = 3


# ----------------------------------------------------------------------------------------- regions
def union(masks) -> np.ndarray | None:
    """Pixelwise OR of bool masks (None for no masks)."""
    masks = list(masks)
    return None if not masks else np.logical_or.reduce(masks)


def visible_region(masks: list[np.ndarray], j: int, i: int) -> np.ndarray:
    """Where edit j is still on top after edit i >= j: masks[j] minus every later mask up to i."""
    later = union(masks[j + 1:i + 1])
    return masks[j] if later is None else masks[j] & ~later


# ----------------------------------------------------------------------------------------- pixel fidelity
def psnr(image: np.ndarray, reference: np.ndarray, region: np.ndarray | None = None) -> float | None:
    """Peak signal-to-noise ratio in dB inside `region` (default: the whole image): 10 log10(255^2 / MSE), the
    MSE taken over the region's pixels and all three channels. math.inf when the region is bit-identical; None
    when the region is empty (nothing to compare: say so rather than invent a number)."""
    if region is None:
        region = np.ones(image.shape[:2], dtype=bool)
    if not region.any():
        return None
    error = image[region].astype(np.float64) - reference[region].astype(np.float64)
    mse = float(np.mean(error * error))
    return math.inf if mse == 0 else 10.0 * math.log10(PEAK * PEAK / mse)


def max_abs_diff(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> int | None:
    """Largest absolute difference of any channel of any pixel in `region` (0 = bit-identical; None if empty)."""
    if not region.any():
        return None
    return int(np.abs(image[region].astype(np.int16) - reference[region].astype(np.int16)).max())


def fidelity(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> dict:
    """PSNR, max abs diff and pixel count of `image` vs `reference` inside `region`."""
    return {"psnr": psnr(image, reference, region), "max_abs_diff": max_abs_diff(image, reference, region),
            "pixels": int(region.sum())}


def background_preservation(background: np.ndarray, steps: list[np.ndarray], masks: list[np.ndarray]) -> list[dict]:
    """Per edit i: fidelity of steps[i] vs the background outside the union of masks[0..i]."""
    return [fidelity(step, background, ~union(masks[:i + 1])) for i, step in enumerate(steps)]


def prior_layer_preservation(steps: list[np.ndarray], masks: list[np.ndarray]) -> list[list[dict]]:
    """Per edit i, per earlier edit j < i: fidelity of steps[i] vs steps[j] inside j's visible region."""
    return [[{"layer": j, **fidelity(steps[i], steps[j], visible_region(masks, j, i))} for j in range(i)]
            for i in range(len(steps))]


# ----------------------------------------------------------------------------------------- what users see
def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` grown by `pixels`: every pixel within Euclidean distance `pixels` of a mask pixel."""
    if pixels <= 0 or not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask) <= pixels


def background_in_mask_psnr(previous: np.ndarray, after: np.ndarray, rough_mask: np.ndarray,
                            object_mask: np.ndarray | None, dilate_px: int = OBJECT_CLEARANCE_PX) -> float | None:
    """PSNR (dB) of `after` vs `previous` (the image before the edit) over the pixels inside the rough edit
    mask but away from the new object: rough_mask minus `object_mask` grown by `dilate_px` (Euclidean).

    `object_mask` is the detector's object (`detector.object_mask`); None or empty when it found none, so
    the whole rough mask counts as background (a failed edit that repainted its box scores low).
    math.inf when those pixels are bit-identical (written "inf" in JSON); None when no pixel is left.
    A rough mask gives a tight edit when this is high: the background around the object came back.
    """
    region = rough_mask.astype(bool)
    if object_mask is not None:
        region = region & ~grow(object_mask.astype(bool), dilate_px)
    return psnr(after, previous, region)


def _edge_steps(image: np.ndarray, mask: np.ndarray, axis: int, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps (mean absolute RGB difference, levels) between neighbours along `axis`: those crossing the mask's
    edge, and those within `band` pairs of a crossing on the same line, both pixels on one side of it."""
    pixels = image.astype(np.float32)
    first = [slice(None)] * 2
    second = [slice(None)] * 2
    first[axis], second[axis] = slice(None, -1), slice(1, None)
    first, second = tuple(first), tuple(second)
    step = np.abs(pixels[second] - pixels[first]).mean(axis=2)
    crossing = mask[first] != mask[second]
    near = ndimage.maximum_filter1d(crossing.astype(np.uint8), size=2 * band + 1, axis=axis).astype(bool)
    return step[crossing], step[near & ~crossing]


def edge_contrast(image: np.ndarray, mask: np.ndarray, band: int = SEAM_BAND_PX) -> float | None:
    """(mean step across the mask's edge + 1) / (mean step between neighbours within `band` px of the edge,
    on either side, in the same direction + 1). Steps are mean absolute RGB differences in levels; the +1
    (one quantisation level) keeps flat images finite. ~1 when the edge is no sharper than its surroundings."""
    crossing, nearby = [], []
    for axis in (0, 1):
        across, near = _edge_steps(image, mask, axis, band)
        crossing.append(across)
        nearby.append(near)
    crossing, nearby = np.concatenate(crossing), np.concatenate(nearby)
    if crossing.size == 0 or nearby.size == 0:
        return None
    return (float(crossing.mean()) + 1.0) / (float(nearby.mean()) + 1.0)


def seam_score(previous: np.ndarray, after: np.ndarray, rough_mask: np.ndarray,
               band: int = SEAM_BAND_PX) -> float | None:
    """How much sharper the rough mask's edge is after the edit than before it, relative to the gradient nearby.

    seam = edge_contrast(after) / edge_contrast(previous), where edge_contrast is the mean image-gradient
    step across the mask's boundary (4-neighbour pairs with one pixel inside, one outside) over the mean
    step between same-direction neighbours up to `band` px from it on either side (see `edge_contrast`).
    Dividing by the image before the edit cancels edges that were already there (texture lines, earlier
    objects). 1.0 = no visible seam (an edit that changed nothing near the edge scores exactly 1.0);
    a tone shift inside the mask (a visible rectangle) scores well above 1 (a 12-level shift on a flat
    background: 13); below 1 = the edge got smoother than before. None when the mask has no edge inside
    the image (empty, or the whole image).
    """
    mask = rough_mask.astype(bool)
    before, now = edge_contrast(previous, mask, band), edge_contrast(after, mask, band)
    if before is None or now is None:
        return None
    return now / before


def what_users_see(background: np.ndarray, steps: list[np.ndarray], masks: list[np.ndarray],
                   colours: list[str | None]) -> list[dict]:
    """Per edit i, against the image just before it: `background_in_mask` (PSNR of the rough mask minus the
    detected object of colours[i], grown by OBJECT_CLEARANCE_PX; None without a colour to look for, as on
    MultiEdit-Bench) and `seam` (seam_score at the rough mask's edge)."""
    seen = []
    for i, (after, mask, colour) in enumerate(zip(steps, masks, colours)):
        previous = background if i == 0 else steps[i - 1]
        found = detector.object_mask(after, mask, colour) if colour else None
        seen.append({
            "background_in_mask": None if found is None else {
                "psnr": background_in_mask_psnr(previous, after, mask, found),
                "object_pixels": int(found.sum())},
            "seam": seam_score(previous, after, mask),
        })
    return seen


# ----------------------------------------------------------------------------------------- edit success
def detection(image: np.ndarray, region: np.ndarray, colour: str, shape: str) -> dict:
    """The shapes-world detector's verdict for an object of `colour` and `shape` inside `region`:
    colour_found, shape_found (colour and shape), and the best-fitting shape and its IoU."""
    if not region.any():
        return {"colour_found": False, "shape_found": False, "best_shape": None, "score": 0.0, "region_pixels": 0}
    found = detector.detect(image, region, colour, shape)
    return {"colour_found": bool(found.colour_found), "shape_found": bool(found.shape_found),
            "best_shape": found.best_shape, "score": round(found.score, 4), "region_pixels": int(region.sum())}


def edit_success(steps: list[np.ndarray], masks: list[np.ndarray], objects: list[tuple[str, str]]) -> list[dict]:
    """Per edit i: was object i drawn inside its mask (`edit`), and for each earlier edit j, the detector's
    verdict on object j inside j's still-visible region R (masks[j] minus masks[j+1..i]) in steps[j]
    (`made`, the like-for-like baseline) and in steps[i] (`now`). `objects[i]` is edit i's (colour, shape)."""
    results = []
    for i, step in enumerate(steps):
        earlier = []
        for j in range(i):
            region = visible_region(masks, j, i)
            earlier.append({"layer": j, "made": detection(steps[j], region, *objects[j]),
                            "now": detection(step, region, *objects[j])})
        results.append({"edit": detection(step, masks[i], *objects[i]), "earlier": earlier})
    return results


def box_of(region: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of a non-empty mask, x horizontal, x1/y1 exclusive."""
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


class ClipCropScore:
    """CLIP crop score: 100 x cos(CLIP image embedding of the mask's bounding-box crop, CLIP text
    embedding of the edit's text). Texts longer than CLIP's window are truncated by its processor.

    Loads transformers' CLIPModel and CLIPProcessor from a local folder only (never the network).
    """

    def __init__(self, folder: str | Path, device: str = "cpu"):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self._torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        self.text_window = self.model.config.text_config.max_position_embeddings  # 77 tokens for real CLIPs
        self.device = device

    def __call__(self, image: np.ndarray, region: np.ndarray, text: str) -> float:
        x0, y0, x1, y1 = box_of(region)
        crop = image[y0:y1, x0:x1]
        inputs = self.processor(text=[text], images=[crop], return_tensors="pt", padding=True, truncation=True,
                                max_length=self.text_window)
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        with self._torch.no_grad():
            out = self.model(**inputs)
        image_embeds = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
        return round(100.0 * float((image_embeds * text_embeds).sum()), 4)


# ----------------------------------------------------------------------------------------- costs
def peak_rss_bytes() -> int | None:
    """The process's peak resident set size so far (None where the platform has no `resource` module)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def median(values) -> float | None:
    """The median of the finite-or-infinite numbers given, ignoring None (None if nothing is left)."""
    kept = [float(v) for v in values if v is not None]
    return float(np.median(kept)) if kept else None


# ----------------------------------------------------------------------------------------- summaries
# The report's numbers, from the per-(scene, method) result records (JSON: PSNR "inf" = identical).
def edit_rows(record: dict, costs: dict | None = None) -> list[dict]:
    """One flat row per edit of a (scene, method) record: the numbers the summaries aggregate.

    `scene` names the record (a plan and a session seed) and `group` the plan its seeds share (the
    unit the statistics resample). `earlier`: one entry per earlier object j that was found right
    after its own edit: {layer, occluded (not findable in its still-visible region even then),
    kept (None when occluded; else still found there now)}.
    """
    edits = record["edits"]
    seconds = (costs or {}).get("edit_seconds") or [None] * len(edits)
    rows = []
    for edit, took in zip(edits, seconds):
        detection = edit["detection"]
        earlier = None
        if detection is not None:
            earlier = [_earlier_row(e) for e in detection["earlier"]
                       if edits[e["layer"]]["detection"]["edit"]["shape_found"]]
        rows.append({
            "scene": record.get("scene"), "group": record.get("group", record.get("scene")),
            "index": edit["index"], "seconds": took, "unet_evals": edit["unet_evals"],
            "memory_bytes": edit["memory_bytes"], "clip_crop": edit["clip_crop"], "held_out": edit["held_out"],
            "background_psnr": _number(edit["background"]["psnr"]),
            "background_max_abs_diff": edit["background"]["max_abs_diff"],
            "prior_psnr": [_number(p["psnr"]) for p in edit["prior_layers"] if p["psnr"] is not None],
            "prior_max_abs_diff": [p["max_abs_diff"] for p in edit["prior_layers"] if p["max_abs_diff"] is not None],
            "background_in_mask_psnr": None if edit["background_in_mask"] is None
            else _number(edit["background_in_mask"]["psnr"]),
            "seam": edit["seam"],
            "colour_found": None if detection is None else detection["edit"]["colour_found"],
            "shape_found": None if detection is None else detection["edit"]["shape_found"],
            "earlier": earlier,
        })
    return rows


def _earlier_row(entry: dict) -> dict:
    occluded = not entry["made"]["shape_found"]
    return {"layer": entry["layer"], "occluded": occluded, "kept": None if occluded else entry["now"]["shape_found"]}


def summarise(rows: list[dict]) -> dict:
    """Aggregate edit rows: medians of PSNR and time, worst cases of PSNR and max abs diff, success rates.

    - background_identical: share of edits whose background (outside all masks so far) is bit-identical;
    - success_colour / success_shape: share of judged edits whose object the detector found;
    - earlier_kept: share of (later edit, earlier object found in its still-visible region when made)
      pairs where it is still found there (like for like);
    - earlier_occluded: share of (later edit, earlier object found when made) pairs where later boxes
      leave too little of it to find, even in the image it was made in;
    - background_in_mask_psnr / seam: medians over edits (see the functions of those names).
    """
    def share(values):
        values = [bool(v) for v in values if v is not None]
        return None if not values else sum(values) / len(values)

    def lowest(values):
        values = [v for v in values if v is not None]
        return min(values) if values else None

    def highest(values):
        values = [v for v in values if v is not None]
        return max(values) if values else None

    prior_psnr = [p for row in rows for p in row["prior_psnr"]]
    prior_diff = [d for row in rows for d in row["prior_max_abs_diff"]]
    earlier = [e for row in rows if row["earlier"] is not None for e in row["earlier"]]
    clip = [row["clip_crop"] for row in rows if row["clip_crop"] is not None]
    return {
        "edits": len(rows),
        "background_psnr_median": median(row["background_psnr"] for row in rows),
        "background_psnr_min": lowest(row["background_psnr"] for row in rows),
        "background_max_abs_diff": highest(row["background_max_abs_diff"] for row in rows),
        "background_identical": share(row["background_max_abs_diff"] == 0 for row in rows
                                      if row["background_max_abs_diff"] is not None),
        "prior_psnr_median": median(prior_psnr), "prior_psnr_min": lowest(prior_psnr),
        "prior_max_abs_diff": highest(prior_diff),
        "success_colour": share(row["colour_found"] for row in rows),
        "success_shape": share(row["shape_found"] for row in rows),
        "success_shape_held_out": share(row["shape_found"] for row in rows if row["held_out"]),
        "earlier_kept": share(e["kept"] for e in earlier),
        "earlier_occluded": share(e["occluded"] for e in earlier),
        "background_in_mask_psnr": median(row["background_in_mask_psnr"] for row in rows),
        "seam": median(row["seam"] for row in rows),
        "clip_crop_mean": float(np.mean(clip)) if clip else None,
        "unet_evals_mean": _mean(row["unet_evals"] for row in rows),
        "memory_bytes_mean": _mean(row["memory_bytes"] for row in rows),
        "seconds_median": median(row["seconds"] for row in rows),
    }


def _number(value) -> float | None:
    return None if value is None else float(value)  # float("inf") reads the JSON's "inf"


def _mean(values) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
