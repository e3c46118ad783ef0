"""The web UI in a real browser: Playwright drives Debian's chromium against the app launched in-process.

Generate a background, paint a mask stroke with the mouse, type a prompt, click Edit: the new layer
appears in the layer panel, and the saved project shows the image changed only inside the stroke.
Writes a screenshot to tests/artifacts/ui.png. LAYERED_EDIT_UI_MODEL=embedded (or a model folder) runs
it on that model instead of tiny random components; LAYERED_EDIT_SCREENSHOT=assets/screenshot.png also
writes the screenshot there (for the README).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from editor import Session

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install chromium); CI installs it")

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# A rough scribble covering an area, as a user paints where an object should go: fractions of the image.
STROKE = ((0.3, 0.3), (0.7, 0.35), (0.3, 0.45), (0.7, 0.5), (0.3, 0.6), (0.65, 0.68))


@pytest.fixture(scope="module")
def ui_model(tiny_model_dir) -> str:
    """conftest's ui_server serves this: LAYERED_EDIT_UI_MODEL when set, else the tiny random model."""
    return os.environ.get("LAYERED_EDIT_UI_MODEL") or str(tiny_model_dir)


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright  # CI installs playwright; only chromium may be missing

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        yield context.pages[0] if context.pages else context.new_page()
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


def image_rect(page, image_size, scale):
    """Where the image lies on screen: the editor centres it in its canvas at the zoom it shows."""
    box = page.locator("#canvas canvas").first.bounding_box()
    zoom = int(re.search(r"(\d+)%", page.locator("#canvas").inner_text()).group(1)) / 100
    width, height = image_size[0] * scale * zoom, image_size[1] * scale * zoom
    return box["x"] + (box["width"] - width) / 2, box["y"] + (box["height"] - height) / 2, width, height


def paint_stroke(page, rect, path, steps=10):
    """Drag the mouse along the polyline `path` (fractions of the image) with the button held."""
    left, top, width, height = rect
    points = [(left + width * (a[0] + (b[0] - a[0]) * k / steps), top + height * (a[1] + (b[1] - a[1]) * k / steps))
              for a, b in zip(path, path[1:]) for k in range(steps + 1)]
    page.mouse.move(*points[0])
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*point)
    page.mouse.up()


def canvas_pixels(page, rect, image_size) -> np.ndarray:
    """The colours the canvas shows at the centre of each image pixel."""
    from PIL import Image

    left, top, width, height = rect
    box = page.locator("#canvas canvas").first.bounding_box()
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#canvas canvas").first.screenshot())).convert("RGB"))
    xs = (left - box["x"] + width * (np.arange(image_size[0]) + 0.5) / image_size[0]).astype(int)
    ys = (top - box["y"] + height * (np.arange(image_size[1]) + 0.5) / image_size[1]).astype(int)
    return shot[ys][:, xs].astype(int)


def distance_to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = np.clip(((points - a) @ (b - a)) / ((b - a) @ (b - a)), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1)


def test_paint_a_stroke_and_edit_in_the_browser(ui_server, page, tmp_path):
    from ui.canvas import brush_size, display_scale

    demo, url = ui_server
    pipeline = demo.handlers.pipeline
    size = pipeline.default_size
    scale = display_scale(size)
    page.goto(url)
    page.wait_for_selector("#generate")
    page.fill("#prompt textarea", "a grass background")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status').innerText.includes('1 layer')", timeout=120_000)

    page.wait_for_timeout(500)  # the editor lays its canvas out after the image arrives
    paint_stroke(page, image_rect(page, size, scale), STROKE)
    page.fill("#prompt textarea", "a red star")
    page.click("#edit")
    page.wait_for_function("document.querySelector('#status').innerText.includes('2 layers')", timeout=120_000)
    assert "1: a red star" in page.locator("#layers").inner_text()
    assert page.locator("#layer-select input").input_value() == "1: a red star"

    # Save the project through the UI and download it, as a user would.
    accordion = page.get_by_text("Photo and project files")
    accordion.click()
    page.get_by_role("button", name="Save project (.lep)").click()
    link = page.locator("#download a[download]").first
    link.wait_for(timeout=60_000)
    with page.expect_download() as download:
        link.click()
    project = tmp_path / "scene.lep"
    download.value.save_as(project)
    layers = Session.load(project, pipeline=pipeline).layers
    accordion.click()

    # The canvas is refreshed by a follow-up event: it shows the edited image, the stroke cleared.
    difference = None
    for _ in range(30):
        shown = canvas_pixels(page, image_rect(page, size, scale), size)
        difference = np.abs(shown - np.asarray(layers[-1].image)).max()
        if difference <= 8:
            break
        page.wait_for_timeout(1000)
    if difference > 8:
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "ui-failed.png", full_page=True)
        np.save(ARTIFACTS / "ui-failed-canvas.npy", shown)
        np.save(ARTIFACTS / "ui-failed-expected.npy", np.asarray(layers[-1].image))
    assert difference <= 8, f"the canvas does not show the edited image (max difference {difference})"
    page.mouse.move(5, 5)  # no hover highlight in the screenshot
    page.wait_for_timeout(500)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "ui.png", full_page=True)
    if os.environ.get("LAYERED_EDIT_SCREENSHOT"):
        page.screenshot(path=os.environ["LAYERED_EDIT_SCREENSHOT"], full_page=True)

    assert [layer.prompt for layer in layers] == ["a grass background", "a red star"]
    before, after = np.asarray(layers[0].image), np.asarray(layers[1].image)
    mask = np.asarray(layers[1].user_mask) > 0
    changed = (before != after).any(axis=2)
    assert changed.any() and not (changed & ~mask).any(), "the edit changed pixels outside the painted stroke"
    # The mask is the stroke: every masked pixel lies near the stroke's path, and the path is masked.
    path = np.array(STROKE) * np.array(size)
    rows, cols = np.nonzero(mask)
    centres = np.stack([cols + 0.5, rows + 0.5], axis=1)
    brush_radius = brush_size(scale) / scale  # in image px
    nearest = np.min([distance_to_segment(centres, a, b) for a, b in zip(path, path[1:])], axis=0)
    assert nearest.max() <= brush_radius + 1.5
    for a, b in zip(path, path[1:]):
        for t in np.linspace(0.1, 0.9, 9):
            x, y = a + t * (b - a)
            assert mask[int(y), int(x)], f"the stroke's path at {x:.1f},{y:.1f} is not in the mask"
