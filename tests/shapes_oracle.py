"""An oracle editor for the shapes world, and deliberately broken variants, to check the benchmark's metrics.

It offers the part of `editor.Session` that `benchmark.runner.run_plan` uses (generate, edit, size, layers,
pipeline.check_prompt_length) and paints with the world's own renderer: the background is drawn from its
name and the session seed, and each edit draws the asked object inside its box (inset from the box's
edges, so the box is a rough mask around it) and copies every other pixel exactly. A perfect editor:
the metrics must give it 100% success, 100% earlier objects kept, and bit-identical backgrounds.

Broken variants (`fault`):
- "shift": each edit also brightens every pixel but its new object by one level;
- "drop": from the second edit on, the first edit's object is gone (the image is redrawn without it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from benchmark import shapes_world as sw

FAULTS = (None, "shift", "drop")
INSET = 0.2  # share of the box's shorter side left free on every side of the drawn object


@dataclass
class OracleLayer:
    image: np.ndarray
    user_mask: np.ndarray
    seed: int
    info: dict = field(default_factory=lambda: {"bcg": "none", "unet_evals": 0})

    @property
    def nbytes(self) -> int:
        return self.image.nbytes + self.user_mask.nbytes


class _Prompts:
    @staticmethod
    def check_prompt_length(text: str, name: str = "prompt") -> None:
        """The oracle reads any prompt."""


def _words(prompt: str, vocabulary) -> list[str]:
    return [w for w in re.findall(r"\w+", prompt) if w in vocabulary]


def object_box(box: tuple[int, int, int, int], shape: str) -> tuple[int, int, int, int]:
    """The largest box of the shape's natural aspect inside `box` inset by INSET of its shorter side, centred."""
    x0, y0, x1, y1 = box
    margin = max(1, round(INSET * min(x1 - x0, y1 - y0)))
    width, height = x1 - x0 - 2 * margin, y1 - y0 - 2 * margin
    aspect = sw.SHAPE_ASPECT[shape]
    if width / height > aspect:
        width = max(1, round(height * aspect))
    else:
        height = max(1, round(width / aspect))
    left, top = x0 + (x1 - x0 - width) // 2, y0 + (y1 - y0 - height) // 2
    return left, top, left + width, top + height


class OracleSession:
    """Paints plans exactly as asked (or with one `fault`), through the calls run_plan makes."""

    pipeline = _Prompts()

    def __init__(self, fault: str | None = None, size: int = 128):
        if fault not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {fault!r}")
        self.fault, self.default_size = fault, size
        self.layers: list[OracleLayer] = []
        self._objects: list[tuple[str, str, tuple[int, int, int, int]]] = []
        self._background: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.layers[0].image.shape[:2]
        return width, height

    def generate(self, prompt: str, *, seed: int, width: int | None = None, height: int | None = None):
        (name,) = _words(prompt, sw.BACKGROUNDS)
        size = (width or self.default_size, height or self.default_size)
        self._background = sw.render_background(name, size, np.random.default_rng(seed))
        self.layers = [OracleLayer(self._background.copy(), np.full(self._background.shape[:2], 255, np.uint8), seed)]

    def edit(self, prompt: str, box, *, seed: int | None = None):
        colour = _words(prompt, sw.COLOURS)[0]
        shape = _words(prompt, sw.SHAPES)[0]
        x0, y0, x1, y1 = box
        mask = np.zeros(self._background.shape[:2], dtype=bool)
        mask[y0:y1, x0:x1] = True
        self._objects.append((colour, shape, object_box(box, shape)))
        image = self.layers[-1].image.copy()
        drawn = sw.draw_object(image, colour, shape, self._objects[-1][2])
        if self.fault == "shift":
            image[~drawn] = np.minimum(image[~drawn].astype(np.int16) + 1, 255).astype(np.uint8)
        if self.fault == "drop" and len(self._objects) >= 2:
            image = self._background.copy()
            for colour_k, shape_k, box_k in self._objects[1:]:
                sw.draw_object(image, colour_k, shape_k, box_k)
        self.layers.append(OracleLayer(image, mask.astype(np.uint8) * 255, self.layers[0].seed))
