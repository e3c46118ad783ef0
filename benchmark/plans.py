"""Benchmark plans: a background prompt and an ordered list of edits, each a prompt in a box.

A plan is model-independent: boxes are normalised [x0, y0, x1, y1] (x horizontal, fractions of the
width and height), so the same plan runs on a 32 px toy model, a 512 px SD checkpoint or a
non-square image; `pixel_box` converts them with the session's actual size. Plans come from three
places: the shapes world (generated from seeds, with colour and shape known so the detector can
judge every edit), MultiEdit-Bench (benchmark/data, MIT), or a user's JSON file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from benchmark import shapes_world as sw

DATA_DIR = Path(__file__).resolve().parent / "data"
MULTIEDIT_PATH = DATA_DIR / "multi_edit_bench_original_100.json"

SHAPES_SCENES = 50  # plans in the shapes suite (--limit takes a prefix; plan i depends only on (seed, i))
SHAPES_EDITS = (3, 6)  # inclusive range of edits per shapes plan
# Long sessions: plans of 24 edits, for drift, latency, memory and MQD cost against the edit index.
# Their boxes are smaller (1/36-1/16 of the image) so 24 of them can keep every earlier one half visible.
LONG_PLAN_EDITS = 24
LONG_BOX_FRAC = (1 / 36, 1 / 16)
LONG_SCENE_INDEX = 10_000  # long plan k is shapes plan (seed, LONG_SCENE_INDEX + k): disjoint from the suite's
# The grid shapes-world boxes are drawn on before normalising; fine enough that rounding to any
# model's size loses nothing of the box's area fraction.
PLAN_GRID = 256
# A new box may hide at most half of any earlier box, so every earlier object stays checkable.
MIN_VISIBLE_FRACTION = 0.5
BOX_TRIES = 100  # tries per box before the plan's boxes are drawn again from the first
PLAN_TRIES = 1000  # whole-plan redraws before a plan's rules are declared impossible
# Boxes closer than this (normalised; 2 px at 256) count as touching: their objects get different colours.
TOUCH_MARGIN = 2 / PLAN_GRID
# Rounding slack when scaling normalised boxes: 0.5 * 64 must give 32, not 31.999 -> 31.
ROUNDING_SLACK = 1e-6

SUITES = ("shapes", "shapes-long", "multiedit")
LONG_SUITE_PLANS = 3  # plans of `--suite shapes-long` (and the default --long-sessions of the documented big run)


@dataclass(frozen=True)
class Edit:
    prompt: str
    box: tuple[float, float, float, float]  # normalised (x0, y0, x1, y1), x horizontal
    seed: int | None = None  # None shares the session's initial noise, as the design recommends
    colour: str | None = None  # shapes world: what the detector looks for
    shape: str | None = None
    held_out: bool | None = None  # shapes world: a (colour, shape, background) triple never seen in training
    clip_text: str | None = None  # what the CLIP crop score compares the crop with (default: the prompt)


@dataclass(frozen=True)
class Plan:
    name: str  # unique within a suite; used in file names
    background: str  # prompt of layer 0
    edits: tuple[Edit, ...]
    seed: int  # session seed: layer 0's noise, shared by every edit whose seed is None
    size: tuple[int, int] | None = None  # (width, height); None = the model's native size
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- geometry
def pixel_box(box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A normalised (x0, y0, x1, y1) box -> pixels of an image of `size` = (width, height).

    x scales by the width and y by the height; edges round outwards, so the pixel box never covers
    less of the image than the normalised one (the shapes suite promises >= 1/9 of the area).
    """
    width, height = size
    x0, y0, x1, y1 = (float(v) for v in box)
    return (max(0, math.floor(x0 * width + ROUNDING_SLACK)), max(0, math.floor(y0 * height + ROUNDING_SLACK)),
            min(width, math.ceil(x1 * width - ROUNDING_SLACK)), min(height, math.ceil(y1 * height - ROUNDING_SLACK)))


def _check_box(box, where: str) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"{where}: a box is [x0, y0, x1, y1] in 0-1, got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise ValueError(f"{where}: a box needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (normalised, x "
                         f"horizontal), got {box!r}")
    return x0, y0, x1, y1


# ----------------------------------------------------------------------------------------- prompts
def fit_prompt(text: str, check_length: Callable[[str], None]) -> tuple[str, bool]:
    """The longest word prefix of `text` that `check_length` accepts, and whether words were dropped.

    `check_length` is the pipeline's check_prompt_length (raises ValueError when too long), so the
    tokenizer of the model under test decides; the runner records every truncation in the report.
    """
    try:
        check_length(text)
        return text, False
    except ValueError:
        pass
    words = text.split()
    fits, too_long = 0, len(words)  # binary search on the number of words kept
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        try:
            check_length(" ".join(words[:middle]))
            fits = middle
        except ValueError:
            too_long = middle
    return " ".join(words[:fits]), True


# ----------------------------------------------------------------------------------------- shapes world
def _disjoint_enough(candidate: np.ndarray, earlier: list[np.ndarray]) -> bool:
    """True when no earlier box would keep less than MIN_VISIBLE_FRACTION of itself visible."""
    covered = np.zeros_like(candidate)
    for box in reversed(earlier):
        visible = box & ~covered & ~candidate
        if visible.sum() < MIN_VISIBLE_FRACTION * box.sum():
            return False
        covered |= box
    return True


def _boxes(rng: np.random.Generator, count: int,
           fractions: tuple[float, float] = (sw.EDIT_BOX_MIN_FRAC, sw.EDIT_BOX_MAX_FRAC)
           ) -> list[tuple[float, float, float, float]]:
    """`count` edit boxes (each covering `fractions` of the image, shapes_world.random_box), normalised.

    No box may hide more than half of an earlier one, so each earlier object stays checkable by the
    detector. A box that would is redrawn (BOX_TRIES times); when that fails, the plan's boxes are all
    drawn again (PLAN_TRIES times): a plan never keeps a box that breaks its rule.
    """
    for _ in range(PLAN_TRIES):
        boxes = _try_boxes(rng, count, fractions)
        if boxes is not None:
            return boxes
    raise ValueError(f"could not place {count} boxes of {fractions} of the image that each keep earlier boxes "
                     f"{MIN_VISIBLE_FRACTION:.0%} visible in {PLAN_TRIES} tries; use fewer or smaller boxes")


def _try_boxes(rng: np.random.Generator, count: int, fractions: tuple[float, float]):
    grid: list[np.ndarray] = []
    boxes = []
    for _ in range(count):
        for _ in range(BOX_TRIES):
            box = sw.random_box(rng, PLAN_GRID, *fractions)
            mask = np.zeros((PLAN_GRID, PLAN_GRID), dtype=bool)
            mask[box[1]:box[3], box[0]:box[2]] = True
            if _disjoint_enough(mask, grid):
                break
        else:
            return None
        grid.append(mask)
        boxes.append(tuple(v / PLAN_GRID for v in box))
    return boxes


def _touch(a, b, margin: float = TOUCH_MARGIN) -> bool:
    """Whether two normalised boxes overlap or come within `margin` of each other."""
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _objects(rng: np.random.Generator, background: str, boxes: list) -> list[tuple[str, str, bool]]:
    """One distinct (colour, shape, held_out) object per box, held-out triples first (honest: never trained on).

    An object's colour differs from that of every earlier object whose box touches its box: two objects of
    one colour side by side would merge into one blob for the detector, which could then judge neither.
    """
    pairs = [(c, s) for c in sw.COLOURS for s in sw.SHAPES]
    held = [p for p in pairs if sw.is_held_out(*p, background)]
    seen = [p for p in pairs if not sw.is_held_out(*p, background)]
    rng.shuffle(held)
    rng.shuffle(seen)
    order = [(c, s, True) for c, s in held] + [(c, s, False) for c, s in seen]
    chosen: list[tuple[str, str, bool]] = []
    for i, box in enumerate(boxes):
        nearby = {chosen[j][0] for j in range(i) if _touch(boxes[j], box)}
        used = {(c, s) for c, s, _ in chosen}
        chosen.append(next(o for o in order if o[0] not in nearby and o[:2] not in used))
    return chosen


def shapes_plan(seed: int, index: int, n_edits: int | None = None, name: str | None = None,
                box_fractions: tuple[float, float] = (sw.EDIT_BOX_MIN_FRAC, sw.EDIT_BOX_MAX_FRAC)) -> Plan:
    """Plan `index` of the shapes suite: deterministic in (seed, index), independent of other plans."""
    rng = np.random.default_rng([seed, index])
    background = sw.BACKGROUNDS[int(rng.integers(len(sw.BACKGROUNDS)))]
    n_edits = n_edits or int(rng.integers(SHAPES_EDITS[0], SHAPES_EDITS[1] + 1))
    boxes = _boxes(rng, n_edits, box_fractions)
    edits = tuple(Edit(prompt=sw.object_prompt(colour, shape), box=box, colour=colour, shape=shape, held_out=held)
                  for (colour, shape, held), box in zip(_objects(rng, background, boxes), boxes))
    return Plan(name=name or f"shapes-{index:03d}", background=sw.caption(background, []), edits=edits,
                seed=int(rng.integers(2**31)), meta={"background_name": background})


def shapes_plans(seed: int, count: int = SHAPES_SCENES) -> list[Plan]:
    return [shapes_plan(seed, index) for index in range(count)]


def long_shapes_plans(seed: int, count: int, n_edits: int = LONG_PLAN_EDITS) -> list[Plan]:
    """`count` long-session plans of `n_edits` smaller edits each, marked meta["part"] = "long": does edit 24
    drift, cost or hold more than edit 1? (memory grows with every layer)."""
    plans = [shapes_plan(seed, LONG_SCENE_INDEX + k, n_edits=n_edits, name=f"long-{k:03d}",
                         box_fractions=LONG_BOX_FRAC) for k in range(count)]
    return [replace(plan, meta={**plan.meta, "part": "long"}) for plan in plans]


def with_seeds(plans: list[Plan], seeds: int) -> list[Plan]:
    """Each plan once per session seed: `seeds` copies named <plan>-s<k>, k = 0..seeds-1, with the same
    prompts and boxes and a session seed drawn from (the plan's seed, k). meta["scene"] names the plan
    they share: the unit the statistics resample, since one scene's seeds are not independent."""
    if seeds < 1:
        raise ValueError(f"seeds must be a positive number of session seeds per scene, got {seeds}")
    return [replace(plan, name=f"{plan.name}-s{k}", seed=int(np.random.default_rng([plan.seed, k]).integers(2**31)),
                    meta={**plan.meta, "scene": plan.name, "seed_index": k})
            for plan in plans for k in range(seeds)]


# ----------------------------------------------------------------------------------------- MultiEdit-Bench
def multiedit_plans(seed: int, path: Path = MULTIEDIT_PATH) -> list[Plan]:
    """MultiEdit-Bench scenes as plans: background_prompt paints layer 0, then every record is one edit.

    Every scene uses the same session seed (as the paper's protocol does). The CLIP text is the
    paper's "An image of {class} in {background}".
    """
    return _multiedit_plans(json.loads(Path(path).read_text()), seed)


def _is_multiedit(data) -> bool:
    return isinstance(data, dict) and all(isinstance(v, list) and v and "local_prompt" in v[0] for v in data.values())


def _multiedit_plans(data: dict, seed: int) -> list[Plan]:
    plans = []
    for key in sorted(data, key=lambda k: (len(k), k)):
        records = sorted(data[key], key=lambda r: r["layer"])
        scene_background = records[0].get("background") or "the background"
        edits = tuple(Edit(prompt=r["local_prompt"], box=_check_box(r["coordinates"], f"scene {key}"),
                           clip_text=f"An image of {r['class']} in {scene_background}") for r in records)
        plans.append(Plan(name=f"multiedit-{int(key):03d}", background=records[0]["background_prompt"],
                          edits=edits, seed=seed, meta={"classes": [r["class"] for r in records]}))
    return plans


# ----------------------------------------------------------------------------------------- user plans
def _user_plan(data: dict, index: int, seed: int) -> Plan:
    where = f"plan {index}"
    if not isinstance(data, dict) or "background" not in data or "edits" not in data:
        raise ValueError(f"{where}: a plan is {{background, edits: [{{prompt, box}}], name?, seed?, size?}}")
    edits = []
    for number, edit in enumerate(data["edits"]):
        unknown = set(edit) - {"prompt", "box", "seed", "colour", "shape", "clip_text"}
        if unknown:
            raise ValueError(f"{where}, edit {number}: unknown keys {sorted(unknown)}")
        edits.append(Edit(prompt=edit["prompt"], box=_check_box(edit["box"], f"{where}, edit {number}"),
                          seed=edit.get("seed"), colour=edit.get("colour"), shape=edit.get("shape"),
                          clip_text=edit.get("clip_text")))
    name = str(data.get("name", f"plan-{index:03d}"))
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"{where}: a plan name names its result files: use letters, digits, '.', '-', '_'; "
                         f"got {name!r}")
    size = tuple(int(v) for v in data["size"]) if data.get("size") else None
    return Plan(name=name, background=data["background"], edits=tuple(edits),
                seed=int(data.get("seed", seed)), size=size)


def load_plans(path: str | Path, seed: int) -> list[Plan]:
    """Plans from a JSON file: one plan {background, edits: [{prompt, box}]}, a list of them, {"plans": [...]},
    or a file in MultiEdit-Bench's format. Boxes are normalised [x0, y0, x1, y1], x horizontal."""
    data = json.loads(Path(path).read_text())
    if _is_multiedit(data):
        return _multiedit_plans(data, seed)
    if isinstance(data, dict) and "plans" in data:
        data = data["plans"]
    plans = [_user_plan(item, index, seed) for index, item in enumerate(data if isinstance(data, list) else [data])]
    names = [plan.name for plan in plans]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: plan names must be unique, got {names}")
    return plans


def suite_plans(suite: str, seed: int) -> list[Plan]:
    """The plans of a named suite, or of a JSON file when `suite` is a path."""
    if suite == "shapes":
        return shapes_plans(seed)
    if suite == "shapes-long":
        return long_shapes_plans(seed, LONG_SUITE_PLANS)
    if suite == "multiedit":
        return multiedit_plans(seed)
    if suite.endswith(".json") or Path(suite).is_file():
        return load_plans(suite, seed)
    raise ValueError(f"--suite must be one of {SUITES} or a plan .json file, got {suite!r}")
