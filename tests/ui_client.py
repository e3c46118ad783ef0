"""Driving the web app like a browser session does, through its HTTP API (gradio_client), on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gradio_client import handle_file
from PIL import Image
from tiny_models import IMAGE_SIZE

from editor import EditSettings
from ui.canvas import canvas_value, display_scale
from ui.controls import SETTING_CONTROLS

STEPS = 2
SCALE = display_scale((IMAGE_SIZE, IMAGE_SIZE))  # the canvas shows the 32x32 images at 16x
STAR = (2, 3, 12, 14)  # (x0, y0, x1, y1) in image pixels, x horizontal
CIRCLE = (18, 16, 29, 27)


def settings(**changes) -> dict:
    """Values for the settings controls: the defaults, with few steps so the tests are fast."""
    values = {name: getattr(EditSettings(), name, "cfg") for name in SETTING_CONTROLS}
    values.update({"num_inference_steps": STEPS, **changes})
    return values



# Every event that changes the session returns the view first: the current image, the layer list, the selected
# layer, the status (ui.handlers.VIEW, less the states, which the HTTP API does not return).
def image_of(result) -> np.ndarray:
    """The current image a view shows (the 'actual pixels' image output)."""
    return np.asarray(Image.open(result[0]).convert("RGB"))


def value(output):
    """A component's new value in a result (gradio_client passes gr.update(...) through as a dict)."""
    return output["value"] if isinstance(output, dict) and output.get("__type__") == "update" else output


def captions(result) -> list[str]:
    """The layer list as "index: name", with " (hidden)" for a hidden layer, bottom layer first."""
    return [f"{row['index']}: {row['name']}" + ("" if row["visible"] else " (hidden)") for row in value(result[1])]


def status_of(result) -> str:
    return value(result[3])


def box_mask(box) -> np.ndarray:
    mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


def painted_canvas(tmp_path: Path, result, *boxes) -> dict:
    """An ImageEditor value as a browser sends it: the upscaled image plus an RGBA stroke layer (canvas px)."""
    background = tmp_path / f"background-{len(list(tmp_path.iterdir()))}.png"
    Image.fromarray(canvas_value(image_of(result))["background"]).save(background)
    layer = np.zeros((IMAGE_SIZE * SCALE, IMAGE_SIZE * SCALE, 4), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        layer[y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = (255, 45, 117, 153)
    path = tmp_path / f"stroke-{len(list(tmp_path.iterdir()))}.png"
    Image.fromarray(layer, "RGBA").save(path)
    return {"background": handle_file(str(background)), "layers": [handle_file(str(path))],
            "composite": handle_file(str(background)), "id": None}


def empty_canvas(tmp_path: Path, result) -> dict:
    canvas = painted_canvas(tmp_path, result)
    return {**canvas, "layers": []}


def generate(client, prompt="a grass background", seed=3, **changes):
    return client.predict(prompt=prompt, seed_mode="fixed", seed=seed, **settings(**changes), api_name="/generate")


def edit(client, canvas, prompt, seed_mode="session", mask_mode="stroke", box=(0, 0, 1, 1), **changes):
    x0, y0, x1, y1 = box
    return client.predict(canvas=canvas, prompt=prompt, seed_mode=seed_mode, seed=0, mask_mode=mask_mode,
                          x0=x0, y0=y0, x1=x1, y1=y1, **settings(**changes), api_name="/edit")


def assert_changed_only_inside(before, after, mask):
    changed = (before != after).any(axis=2)
    assert changed.any(), "the edit changed nothing"
    assert not (changed & ~mask).any(), "pixels outside the mask changed"


