"""The web UI: one Gradio app over editor.Session (`layered-edit ui`).

Layout first, then event wiring. Handlers are plain functions of values that call editor.Session;
there is no diffusion code here. One pipeline is loaded once and shared by every browser session
(the pipeline serialises its own calls); each browser session has its own Session in a gr.State,
so two tabs never see each other's layers.

Every change to a browser session is autosaved (ui/autosave.py) when the app has an autosave folder; on
page load the app offers to restore one of the newest autosaves. A closed tab's Session is freed at once
(its autosave stays on disk).

The canvas shows the image upscaled by an integer factor (nearest neighbour), so a 64x64 image
from the embedded model is comfortable to paint on; a stroke is mapped back to image pixels by a
nearest-neighbour resize (an image pixel is in the mask when the stroke covers its centre).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
import warnings
import weakref
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from editor import EditSettings, Session
from editor import settings as settings_module
from memory import MemoryStateError, ProjectError
from pipelines.attention import ATTENTION_ALIASES
from ui.autosave import Autosave
from ui.autosave import new_id as new_autosave_id

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "200mb"  # photos and .lep projects; an SD project with many layers is a few MB
CANVAS_TARGET = 512  # px: small images are shown upscaled by an integer factor to about this size
THUMBNAIL_TARGET = 128
MAX_UI_SEED = 2**31 - 1  # random seeds are drawn below this; JavaScript numbers stay exact
SCRATCH_MAX_AGE_S = 3600  # saved projects / exports are kept this long for the browser to download
MAX_QUEUE = 16  # events waiting for a worker, all tabs together; beyond it a click is refused ("queue is full")
SESSION_IDLE_TTL_S = 24 * 3600  # a tab's Session is freed after a day without a change (its autosave stays)

SEED_MODES = [("session noise", "session"), ("this number", "fixed"), ("random", "random")]
MASK_MODES = [("brush stroke", "brush"), ("bounding box of stroke", "stroke box"), ("box x0, y0, x1, y1", "box")]
GUIDANCE_NOTE = "Distilled guidance runs one UNet pass per step and has no negative prompt."

# Settings controls, in the order every generating handler takes them. "guidance" exists only when
# EditSettings has it (the distilled-guidance adapter); otherwise its control is hidden and not passed.
SETTING_CONTROLS = ("negative_prompt", "num_inference_steps", "guidance_scale", "guidance", "scheduler",
                    "free_steps_ratio", "attention", "background", "preserve", "mask_dilation", "mask_feather")
INTEGER_SETTINGS = ("num_inference_steps", "mask_dilation", "mask_feather")

FRIENDLY_ERRORS = (ValueError, TypeError, IndexError, KeyError, MemoryStateError, ProjectError, OSError)

CSS = """
#canvas canvas, #layers img, .pixelated img { image-rendering: pixelated; }
#status { min-height: 2.2em; }
"""


# ---------------------------------------------------------------------------------------------- pure helpers
def has_guidance_setting() -> bool:
    return "guidance" in EditSettings.names()


def guidance_choices(pipeline) -> list[str]:
    """Guidance modes this pipeline can run: "distilled" only when it has a guidance adapter."""
    return ["cfg", "distilled"] if getattr(pipeline, "has_guidance_adapter", False) else ["cfg"]


def settings_from_controls(**values) -> dict:
    """The EditSettings keyword arguments for the values of the settings controls."""
    names = EditSettings.names()
    settings = {name: values[name] for name in SETTING_CONTROLS if name in names and name in values}
    for name in INTEGER_SETTINGS:
        if name in settings:
            settings[name] = _integer(name, settings[name])
    if settings.get("guidance") == "distilled":
        settings["negative_prompt"] = ""  # not supported by a distilled adapter; the textbox is disabled
    if settings.get("negative_prompt") is None:
        settings["negative_prompt"] = ""
    return settings


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


def pick_seed(mode: str, seed) -> int | None:
    """None = session noise (edits share the background's noise; re-edits keep the layer's seed)."""
    if mode == "random":
        return secrets.randbelow(MAX_UI_SEED)
    if mode == "fixed":
        if seed is None:
            raise ValueError("enter a seed number, or choose 'random'")
        return _integer("seed", seed)
    if mode == "session":
        return None
    raise ValueError(f"unknown seed mode {mode!r}")


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


def export_zip(session: Session, path: Path) -> Path:
    """Write the layers as PNGs plus a manifest.json into the zip file `path`."""
    manifest = {"format": "layered-edit layers", "version": 1, "model": session.model,
                "size": list(session.size), "image": "image.png", "layers": []}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.png", _png_bytes(session.image))
        for index, layer in enumerate(session.layers):
            stem = f"layers/{index:02d}"
            image = np.asarray(layer.image)
            alpha = np.clip(np.asarray(layer.mask) * 255 + 0.5, 0, 255).astype(np.uint8)
            archive.writestr(f"{stem}_image.png", _png_bytes(Image.fromarray(image)))
            archive.writestr(f"{stem}_layer.png", _png_bytes(Image.fromarray(np.dstack([image, alpha]), "RGBA")))
            archive.writestr(f"{stem}_mask.png", _png_bytes(Image.fromarray(np.asarray(layer.user_mask))))
            manifest["layers"].append({
                "index": index, "kind": layer.kind, "prompt": layer.prompt,
                "negative_prompt": layer.negative_prompt, "seed": layer.seed, "visible": layer.visible,
                "settings": dict(layer.settings), "info": dict(layer.info),
                "image": f"{stem}_image.png", "layer": f"{stem}_layer.png", "mask": f"{stem}_mask.png"})
        manifest["files"] = {
            "image.png": "the current picture (top visible layer)",
            "NN_image.png": "the picture after layer NN",
            "NN_layer.png": "layer NN's pixels with its soft mask as alpha (RGBA)",
            "NN_mask.png": "the mask painted for layer NN (white = edited)"}
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    path.write_bytes(buffer.getvalue())
    return path


def _png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _integer(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)


def friendly(handler):
    """Turn the errors a user can cause into a gr.Error with the message (never a stack trace),
    and the library's warnings (e.g. a mask covering the whole image) into gr.Warning toasts."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = handler(*args, **kwargs)
            except gr.Error:
                raise
            except FRIENDLY_ERRORS as error:
                raise gr.Error(str(error) or type(error).__name__, title="Could not do that",
                               print_exception=False) from None
            except MemoryError:
                raise gr.Error("out of memory: try fewer steps or a smaller image", print_exception=False) from None
            except RuntimeError as error:
                log.exception("%s failed", handler.__name__)
                message = "out of memory" if "out of memory" in str(error).lower() else "the model failed"
                raise gr.Error(f"{message}: {str(error).splitlines()[0] if str(error) else ''}",
                               print_exception=False) from None
        for warning in caught:
            if warning.category is UserWarning and _is_ours(warning.filename):
                gr.Warning(str(warning.message))
        return result

    return wrapper


def _is_ours(filename: str) -> bool:
    root = Path(__file__).resolve().parent.parent
    try:
        return Path(filename).resolve().is_relative_to(root) and ".venv" not in Path(filename).parts
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------------------------------- handlers
def autosaved(handler):
    """A handler that changes its session autosaves it afterwards (its result starts with the session)."""

    @functools.wraps(handler)
    def wrapper(self, *args, **kwargs):
        result = handler(self, *args, **kwargs)
        self.autosave_session(result[0])
        return result

    return wrapper


class Handlers:
    """The app's event handlers: plain functions of component values that call editor.Session.

    `session` is the browser session's gr.State value: None until its first action, then a
    Session on the shared pipeline. Every generating handler returns the new view (see `view`).
    With an `autosave` folder, every handler that changes a session saves it there (`autosaved`).
    """

    def __init__(self, pipeline, model: str | None = None, scratch: Path | None = None,
                 autosave: Autosave | None = None):
        self.pipeline = pipeline
        self.model = model
        self.scratch = Path(scratch or tempfile.mkdtemp(prefix="layered-edit-ui-"))
        self.autosave = autosave
        self.live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()  # every Session made here and not freed
        self._autosave_ids: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    # -------------------------------------------------------------- state
    def new_session(self) -> Session:
        return self._track(Session(self.pipeline, model=self.model))

    def session_or_new(self, session) -> Session:
        return session if session is not None else self.new_session()

    def view(self, session: Session | None, selected: int | None = None) -> tuple:
        """(session, image, gallery, layer selector, visible checkbox, status, undo, redo).

        The canvas is not part of the view: it is refreshed by a follow-up event (`canvas`), because
        an ImageEditor that is both an event's input and its output loses its state in the browser.
        """
        layers = session.layers if session is not None else ()
        if not layers:
            return (session, None, [], gr.update(choices=[], value=None), gr.update(value=True, interactive=False),
                    "No image yet: write a prompt and **Generate background**, or start from a photo.",
                    gr.update(interactive=bool(session and session.can_undo)),
                    gr.update(interactive=bool(session and session.can_redo)))
        if selected is None or not 0 <= selected < len(layers):
            selected = len(layers) - 1
        width, height = session.size
        top = layers[-1]
        status = (f"**{len(layers)} layer{'s' if len(layers) > 1 else ''}** · {width}x{height} px · "
                  f"shown at {display_scale(session.size)}x · last: {top.kind} '{top.prompt}'"
                  f" in {top.info.get('seconds', 0):.2f} s")
        return (session, session.image,
                [(layer_thumbnail(layer), layer_caption(i, layer)) for i, layer in enumerate(layers)],
                gr.update(choices=[(layer_caption(i, layer), i) for i, layer in enumerate(layers)], value=selected),
                gr.update(value=layers[selected].visible, interactive=selected > 0),
                status, gr.update(interactive=session.can_undo), gr.update(interactive=session.can_redo))

    @staticmethod
    def canvas(session) -> dict | None:
        """The canvas showing the session's current image (upscaled), with no strokes."""
        return canvas_value(session.image if session is not None else None)

    # -------------------------------------------------------------- creating layers
    @autosaved
    def generate(self, session, prompt, seed_mode, seed, negative_prompt, num_inference_steps, guidance_scale,
                 guidance, scheduler, free_steps_ratio, attention, background, preserve, mask_dilation,
                 mask_feather, progress=gr.Progress(track_tqdm=True)):
        session = self.session_or_new(session)
        settings = settings_from_controls(**_settings_locals(locals()))
        chosen = pick_seed(seed_mode, seed)
        if chosen is None and seed is not None:  # "session noise" for a new background: the number shown
            chosen = _integer("seed", seed)
        progress(0, desc="painting the background")
        session.generate(prompt or "", seed=chosen, **settings)
        return (*self.view(session), session.layers[-1].seed)

    @autosaved
    def edit(self, session, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, negative_prompt,
             num_inference_steps, guidance_scale, guidance, scheduler, free_steps_ratio, attention, background,
             preserve, mask_dilation, mask_feather, progress=gr.Progress(track_tqdm=True)):
        session = self._require_image(session, "edit")
        settings = settings_from_controls(**_settings_locals(locals()))
        mask = mask_from_canvas(canvas, session.size, mask_mode, (x0, y0, x1, y1))
        if mask is None:
            raise ValueError("paint the area to edit on the canvas first (or choose the box mask mode)")
        progress(0, desc=f"painting '{prompt}'")
        session.edit(prompt or "", mask, seed=pick_seed(seed_mode, seed), **settings)
        return (*self.view(session), session.layers[-1].seed)

    @autosaved
    def replace(self, session, index, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, negative_prompt,
                num_inference_steps, guidance_scale, guidance, scheduler, free_steps_ratio, attention, background,
                preserve, mask_dilation, mask_feather, progress=gr.Progress(track_tqdm=True)):
        """Re-edit the selected layer with the prompt, seed and settings in the controls; a mask painted
        on the canvas (or a box) replaces its mask, an empty canvas keeps it."""
        session = self._require_image(session, "re-edit a layer")
        index = self._index(session, index)
        settings = settings_from_controls(**_settings_locals(locals()))
        mask = None if index == 0 else mask_from_canvas(canvas, session.size, mask_mode, (x0, y0, x1, y1))
        progress(0, desc=f"re-painting layer {index} and replaying the layers above")
        session.replace(index, prompt=prompt or None, mask=mask, seed=pick_seed(seed_mode, seed), **settings)
        return (*self.view(session, index), session.layers[index].seed)

    @autosaved
    def start_from_image(self, session, photo, prompt, seed_mode, seed, negative_prompt, num_inference_steps,
                         guidance_scale, guidance, scheduler, free_steps_ratio, attention, background, preserve,
                         mask_dilation, mask_feather, progress=gr.Progress(track_tqdm=True)):
        if photo is None:
            raise ValueError("upload a photo first")
        session = self.session_or_new(session)
        settings = settings_from_controls(**_settings_locals(locals()))
        progress(0, desc="encoding the photo")
        session.start_from_image(photo, prompt or "", seed=pick_seed(seed_mode, seed), **settings)
        return (*self.view(session), session.layers[-1].seed)

    # -------------------------------------------------------------- changing the stack
    @autosaved
    def set_visible(self, session, index, visible, progress=gr.Progress(track_tqdm=True)):
        session = self._require_image(session, "hide or show a layer")
        index = self._index(session, index)
        progress(0, desc=f"{'showing' if visible else 'hiding'} layer {index}")
        session.set_visible(index, bool(visible))
        return self.view(session, index)

    @autosaved
    def remove(self, session, index, progress=gr.Progress(track_tqdm=True)):
        session = self._require_image(session, "remove a layer")
        index = self._index(session, index)
        progress(0, desc=f"removing layer {index}")
        session.remove(index)
        return self.view(session, min(index, len(session.layers) - 1))

    @autosaved
    def undo(self, session):
        session = self._require_image(session, "undo")
        done = session.undo()
        gr.Info(f"undid: {done}")
        return self.view(session)

    @autosaved
    def redo(self, session):
        session = self.session_or_new(session)
        done = session.redo()
        gr.Info(f"redid: {done}")
        return self.view(session)

    def reset(self, session):
        return self.view(self.new_session())

    def select_layer(self, session, index):
        """Fill the controls with a layer's prompt, seed and settings, ready to re-edit it."""
        session = self._require_image(session, "select a layer")
        index = self._index(session, index)
        layer = session.layers[index]
        settings = dict(layer.settings)
        if "attention" in settings:  # a name older projects hold ("qd") shows as today's choice
            settings["attention"] = ATTENTION_ALIASES.get(settings["attention"], settings["attention"])
        shared = layer.kind == "edit" and bool(layer.info.get("shares_session_seed"))
        values = [settings.get(name, getattr(EditSettings(), name, None)) for name in SETTING_CONTROLS]
        values[0] = layer.negative_prompt
        if settings.get("guidance") not in guidance_choices(self.pipeline):
            values[SETTING_CONTROLS.index("guidance")] = gr.update()
        return (gr.update(value=index), layer.prompt, "session" if shared else "fixed", layer.seed, *values,
                gr.update(value=layer.visible, interactive=index > 0))

    def select_from_gallery(self, session, evt: gr.SelectData):
        return self.select_layer(session, evt.index)

    # -------------------------------------------------------------- project files
    def save(self, session):
        session = self._require_image(session, "save")
        return str(session.save(self._scratch_file("layered-edit-project.lep")))

    @autosaved
    def load(self, session, upload, progress=gr.Progress(track_tqdm=True)):
        if upload is None:
            raise ValueError("choose a .lep project file to open")
        path = Path(upload if isinstance(upload, (str, os.PathLike)) else upload.name)
        if path.suffix.lower() != ".lep":
            raise ValueError(f"{path.name} is not a layered-edit project: choose a .lep file")
        return self.view(self._open(path))

    def export(self, session):
        session = self._require_image(session, "export")
        return str(export_zip(session, self._scratch_file("layered-edit-layers.zip")))

    # -------------------------------------------------------------- autosave and restore
    def autosave_session(self, session) -> None:
        """Save `session` to the autosave folder under its own id. A failure never breaks the edit that
        came before it: the user gets a warning and the previous autosave stays as it was."""
        if self.autosave is None or session is None or not session.layers:
            return
        with self._lock:
            session_id = self._autosave_ids.setdefault(session, new_autosave_id())
        try:
            self.autosave.save(session_id, session)
        except Exception as error:  # noqa: BLE001 - any failure to autosave must leave the edit done
            log.warning("autosave to %s failed: %s", self.autosave.folder, error)
            gr.Warning(f"Autosave failed ({error or type(error).__name__}). The change is done but not saved to "
                       "disk: use Save project to keep it.")

    def autosave_offer(self) -> tuple:
        """On page load: (the restore list, the restore row shown only when there is something to restore)."""
        entries = self.autosave.entries() if self.autosave is not None else []
        return (gr.update(choices=[(entry.label(), entry.id) for entry in entries],
                          value=entries[0].id if entries else None),
                gr.update(visible=bool(entries)))

    @autosaved
    def restore(self, session, choice, progress=gr.Progress(track_tqdm=True)):
        """Open an autosaved session in this tab; it goes on autosaving under the same id."""
        if self.autosave is None:
            raise ValueError("autosave is off in this app")
        if not choice:
            raise ValueError("choose an autosaved session to restore")
        restored = self._open(self.autosave.path(choice))  # the same untrusted-file path as an upload
        with self._lock:
            self._autosave_ids[restored] = choice
        return (*self.view(restored), gr.update(visible=False))

    def session_closed(self, session) -> None:
        """gr.State's delete_callback: the tab closed (or idled past SESSION_IDLE_TTL_S); the Session is
        dropped by gradio and freed, its autosave stays on disk."""
        if session is not None:
            log.info("browser session closed: %d layers freed from memory", len(session.layers))

    # -------------------------------------------------------------- internals
    def _open(self, path: Path) -> Session:
        loaded = self._track(Session.load(path, pipeline=self.pipeline))
        if self.model is not None and loaded.model not in (None, self.model):
            gr.Warning(f"this project was made with the model {loaded.model!r}; it is open on {self.model!r}")
        return loaded

    def _track(self, session: Session) -> Session:
        with self._lock:
            self.live_sessions.add(session)
        return session

    def _require_image(self, session, action: str) -> Session:
        if session is None or not session.layers:
            raise MemoryStateError(f"cannot {action}: there is no image yet; generate a background or start "
                                   "from a photo first")
        return session

    @staticmethod
    def _index(session: Session, index) -> int:
        if index is None:
            raise ValueError("select a layer first (click its thumbnail or pick it in the list)")
        index = _integer("layer", index)
        if not 0 <= index < len(session.layers):
            raise IndexError(f"there is no layer {index}: the image has layers 0..{len(session.layers) - 1}")
        return index

    def _scratch_file(self, name: str) -> Path:
        """A fresh folder for one download; folders older than SCRATCH_MAX_AGE_S are pruned."""
        self.scratch.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for old in self.scratch.iterdir():
            try:
                if now - old.stat().st_mtime > SCRATCH_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(dir=self.scratch)) / name


def _settings_locals(values: dict) -> dict:
    return {name: values[name] for name in SETTING_CONTROLS}


# ---------------------------------------------------------------------------------------------- the app
def build_app(pipeline, model: str | None = None, autosave: Autosave | None = None) -> gr.Blocks:
    """The Gradio app on a loaded pipeline (shared by all browser sessions). With `autosave`, every change
    of a browser session is saved there and page loads offer to restore the newest autosaves."""
    handlers = Handlers(pipeline, model, autosave=autosave)
    defaults = EditSettings()
    width, height = pipeline.default_size
    scale = display_scale((width, height))
    guidance_modes = guidance_choices(pipeline)
    with gr.Blocks(title="layered-edit", delete_cache=(3600, 3600), analytics_enabled=False) as demo:
        state = gr.State(None, time_to_live=SESSION_IDLE_TTL_S, delete_callback=handlers.session_closed)
        gr.Markdown("## layered-edit\nEvery edit is a layer: paint a mask, describe what goes there, click "
                    "**Edit in mask**. Outside the mask the image stays bit-identical; click a layer to re-edit, "
                    "hide or remove it.")
        with gr.Row(visible=False, equal_height=True, elem_id="restore-offer") as restore_offer:
            restore_choice = gr.Dropdown([], label="Restore last session (autosaved: time, layers, first prompt)",
                                         elem_id="restore-choice", interactive=True, scale=4)
            restore_button = gr.Button("Restore", variant="primary", elem_id="restore", scale=1, min_width=90)
        with gr.Row():
            with gr.Column(scale=4):
                canvas = gr.ImageEditor(
                    label="Canvas: paint where the edit goes", show_label=False,  # a shown label covers the image
                    elem_id="canvas", type="numpy", image_mode="RGBA",
                    format="png", sources=(), transforms=(), interactive=True, height=CANVAS_TARGET + 110,
                    canvas_size=(width * scale, height * scale),
                    layers=gr.LayerOptions(allow_additional_layers=False, layers=["mask"]),
                    brush=gr.Brush(colors=[("#ff2d75", 0.6)], default_color=("#ff2d75", 0.6), color_mode="fixed",
                                   default_size=brush_size(scale)),
                    eraser=gr.Eraser(default_size=brush_size(scale)),
                    placeholder="Generate a background or start from a photo")
                with gr.Row(equal_height=True):
                    mask_mode = gr.Radio(MASK_MODES, value="brush", label="Mask from", scale=3)
                    x0 = gr.Number(0, label="box x0", precision=0, minimum=0, min_width=70, scale=1)
                    y0 = gr.Number(0, label="y0", precision=0, minimum=0, min_width=70, scale=1)
                    x1 = gr.Number(width // 2, label="x1", precision=0, minimum=0, min_width=70, scale=1)
                    y1 = gr.Number(height // 2, label="y1", precision=0, minimum=0, min_width=70, scale=1)
                status = gr.Markdown(elem_id="status", label="Status")
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", placeholder="a red star", lines=1, elem_id="prompt")
                negative_prompt = gr.Textbox(defaults.negative_prompt, label="Negative prompt", elem_id="negative")
                with gr.Row(equal_height=True):
                    seed_mode = gr.Radio(SEED_MODES, value="session", label="Seed", scale=3,
                                         info="session noise: edits reuse the background's noise")
                    seed = gr.Number(7, label="Seed number", precision=0, minimum=0, maximum=MAX_UI_SEED, scale=1,
                                     min_width=90)
                with gr.Row():
                    generate_button = gr.Button("Generate background", elem_id="generate")
                    edit_button = gr.Button("Edit in mask", variant="primary", elem_id="edit")
                gallery = gr.Gallery(label="Layers (click one to select it)", elem_id="layers", columns=4,
                                     height=190, format="png", allow_preview=False, object_fit="contain",
                                     interactive=False, fit_columns=False)
                layer_select = gr.Dropdown([], label="Selected layer", elem_id="layer-select", interactive=True)
                with gr.Row(equal_height=True):
                    layer_visible = gr.Checkbox(True, label="Visible", interactive=False, elem_id="layer-visible",
                                                min_width=90)
                    replace_button = gr.Button("Re-edit selected", elem_id="replace", min_width=90)
                    remove_button = gr.Button("Remove selected", variant="stop", elem_id="remove", min_width=90)
                with gr.Row():
                    undo_button = gr.Button("Undo", interactive=False, elem_id="undo", min_width=60)
                    redo_button = gr.Button("Redo", interactive=False, elem_id="redo", min_width=60)
                    reset_button = gr.Button("New session", elem_id="new-session", min_width=60)
        with gr.Accordion("Settings (used by generate, edit and re-edit)", open=True):
            with gr.Row():
                steps = gr.Slider(1, 100, defaults.num_inference_steps, step=1, label="Steps")
                guidance_scale = gr.Slider(0, 20, defaults.guidance_scale, step=0.5, label="Guidance scale")
                scheduler = gr.Dropdown(sorted(settings_module.SCHEDULERS), value=defaults.scheduler,
                                        label="Scheduler")
                guidance = gr.Radio(
                    guidance_modes, value=getattr(defaults, "guidance", "cfg"), label="Guidance mode",
                    visible=has_guidance_setting(), interactive=len(guidance_modes) > 1,
                    info=GUIDANCE_NOTE if len(guidance_modes) > 1 else "this model has no distilled adapter")
                free_steps_ratio = gr.Slider(0, 1, defaults.free_steps_ratio, step=0.05,
                                             label="BCG free-steps ratio")
            with gr.Row():
                attention = gr.Radio(list(settings_module.ATTENTION_MODES), value=defaults.attention,
                                     label="Attention (MQD)")
                background = gr.Radio(list(settings_module.BACKGROUND_SOURCES), value=defaults.background,
                                      label="Background source")
                preserve = gr.Radio(list(settings_module.PRESERVE_MODES), value=defaults.preserve, label="Preserve")
                mask_dilation = gr.Slider(0, 32, defaults.mask_dilation, step=1, label="Mask dilation (px)")
                mask_feather = gr.Slider(0, 32, defaults.mask_feather, step=1, label="Mask feather (px)")
        with gr.Accordion("Photo and project files", open=False), gr.Row():
            photo = gr.Image(label="Start from a photo (the prompt describes it)", type="pil", image_mode=None,
                             sources=["upload", "clipboard"], format="png", height=200)
            with gr.Column():
                photo_button = gr.Button("Start from photo")
                save_button = gr.Button("Save project (.lep)")
                export_button = gr.Button("Export layers (PNG + manifest .zip)")
                download = gr.File(label="Download", interactive=False, elem_id="download")
            current = gr.Image(label="Current image (actual pixels)", type="pil", format="png", interactive=False,
                               height=200, elem_id="current", elem_classes=["pixelated"])
            project_upload = gr.File(label="Open project (.lep)", file_types=[".lep"], type="filepath",
                                     elem_id="open-project")

        # ------------------------------------------------------------------ wiring
        settings = [negative_prompt, steps, guidance_scale, guidance, scheduler, free_steps_ratio, attention,
                    background, preserve, mask_dilation, mask_feather]
        assert len(settings) == len(SETTING_CONTROLS)
        box = [x0, y0, x1, y1]
        view = [state, current, gallery, layer_select, layer_visible, status, undo_button, redo_button]
        model_events = {"concurrency_id": "pipeline", "concurrency_limit": 1}  # the pipeline runs one call at a time

        def changes_view(event):
            """After a successful change, show the new image on the canvas (clearing the strokes)."""
            event.success(handlers.canvas, [state], [canvas], show_progress="hidden", api_name=False, queue=False)

        changes_view(generate_button.click(
            friendly(handlers.generate), [state, prompt, seed_mode, seed, *settings], [*view, seed],
            api_name="generate", **model_events))
        changes_view(edit_button.click(
            friendly(handlers.edit), [state, canvas, prompt, seed_mode, seed, mask_mode, *box, *settings],
            [*view, seed], api_name="edit", **model_events))
        changes_view(replace_button.click(
            friendly(handlers.replace), [state, layer_select, canvas, prompt, seed_mode, seed, mask_mode, *box,
                                         *settings], [*view, seed], api_name="replace", **model_events))
        changes_view(photo_button.click(
            friendly(handlers.start_from_image), [state, photo, prompt, seed_mode, seed, *settings], [*view, seed],
            api_name="start_from_image", **model_events))
        changes_view(layer_visible.input(friendly(handlers.set_visible), [state, layer_select, layer_visible], view,
                                         api_name="set_visible", **model_events))
        changes_view(remove_button.click(friendly(handlers.remove), [state, layer_select], view, api_name="remove",
                                         **model_events))
        changes_view(undo_button.click(friendly(handlers.undo), [state], view, api_name="undo"))
        changes_view(redo_button.click(friendly(handlers.redo), [state], view, api_name="redo"))
        changes_view(reset_button.click(friendly(handlers.reset), [state], view, api_name="new_session"))
        changes_view(project_upload.upload(friendly(handlers.load), [state, project_upload], view, api_name="load",
                                           **model_events))
        changes_view(restore_button.click(friendly(handlers.restore), [state, restore_choice], [*view, restore_offer],
                                          api_name="restore", **model_events))
        demo.load(friendly(handlers.autosave_offer), None, [restore_choice, restore_offer], api_name="autosaves",
                  queue=False, show_progress="hidden")

        def free_closed_session(request: gr.Request):
            """A closed (or reloaded) tab's Session is freed now rather than after gradio's hour of grace;
            the autosave keeps it restorable. Without gradio's state holder, time_to_live still frees it."""
            holder = getattr(demo, "state_holder", None)
            if holder is not None and request is not None and request.session_hash:
                holder.delete_state(request.session_hash)

        demo.unload(free_closed_session)

        selection = [layer_select, prompt, seed_mode, seed, *settings, layer_visible]
        layer_select.input(friendly(handlers.select_layer), [state, layer_select], selection, api_name="select_layer")
        gallery.select(friendly(handlers.select_from_gallery), [state], selection, api_name=False)
        guidance.change(_guidance_changed, [guidance], [negative_prompt], api_name=False)

        save_button.click(friendly(handlers.save), [state], [download], api_name="save")
        export_button.click(friendly(handlers.export), [state], [download], api_name="export")
    demo.handlers = handlers  # for tests and embedding
    return demo


def _guidance_changed(mode):
    distilled = mode == "distilled"
    return gr.update(interactive=not distilled,
                     info=f"disabled: {GUIDANCE_NOTE}" if distilled else None)


def launch_app(demo: gr.Blocks, *, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT,
               max_file_size: str | int = MAX_UPLOAD, max_queue: int = MAX_QUEUE, prevent_thread_lock: bool = False,
               quiet: bool = False):
    """Serve the app (never shared through a public link). Returns gradio's (app, local_url, share_url).

    At most `max_queue` events wait for a worker; a click beyond that is refused at once with gradio's
    "queue is full" message (try again) rather than waiting behind everyone else's edits."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this address can use the app and the model", host)
    theme = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                           font_mono=["ui-monospace", "monospace"])  # no web fonts: the app works offline
    return demo.queue(default_concurrency_limit=4, max_size=max_queue).launch(
        server_name=host, server_port=port, share=False, show_error=True, max_file_size=max_file_size,
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False, theme=theme, css=CSS,
        footer_links=["api"], inbrowser=False)


def serve(model: str | None = "embedded", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          device: str | None = None, autosave: Autosave | None = None) -> int:
    """`layered-edit ui`: load the model once and serve the app until interrupted (autosaving to `autosave`)."""
    session = Session.from_pretrained(model, device=device)
    demo = build_app(session.pipeline, model=session.model, autosave=autosave)
    _, url, _ = launch_app(demo, host=host, port=port, prevent_thread_lock=True, quiet=True)
    saving = f"autosaving to {autosave.folder}" if autosave is not None else "autosave off"
    print(f"layered-edit ui: model {session.model!r} on {url}, {saving} (Ctrl-C stops)", flush=True)
    demo.block_thread()
    return 0
