"""The app's event handlers: plain functions of component values that call editor.Session.

One pipeline is loaded once and shared by every browser session (the pipeline serialises its own calls);
each browser session has its own Session in a gr.State, so two tabs never see each other's layers. Every
change to a browser session is autosaved (ui/autosave.py) when the app has an autosave folder.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

import gradio as gr

from editor import Session
from memory import MemoryStateError
from ui.autosave import Autosave
from ui.autosave import new_id as new_autosave_id
from ui.canvas import canvas_value, display_scale, layer_caption, layer_thumbnail, mask_from_canvas
from ui.controls import GUIDANCE_NOTE, SETTING_CONTROLS, SettingsControls, guidance_choices, pick_seed, whole_number

log = logging.getLogger(__name__)

SCRATCH_MAX_AGE_S = 3600  # saved projects / exports are kept this long for the browser to download


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
    def generate(self, session, prompt, seed_mode, seed, settings: SettingsControls,
                 progress=gr.Progress(track_tqdm=True)):
        session = self.session_or_new(session)
        chosen = pick_seed(seed_mode, seed)
        if chosen is None and seed is not None:  # "session noise" for a new background: the number shown
            chosen = whole_number("seed", seed)
        progress(0, desc="painting the background")
        session.generate(prompt or "", seed=chosen, **settings.edit_settings())
        return (*self.view(session), session.layers[-1].seed)

    @autosaved
    def edit(self, session, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, settings: SettingsControls,
             progress=gr.Progress(track_tqdm=True)):
        session = self._require_image(session, "edit")
        edit_settings = settings.edit_settings()
        mask = mask_from_canvas(canvas, session.size, mask_mode, (x0, y0, x1, y1))
        if mask is None:
            raise ValueError("paint the area to edit on the canvas first (or choose the box mask mode)")
        progress(0, desc=f"painting '{prompt}'")
        session.edit(prompt or "", mask, seed=pick_seed(seed_mode, seed), **edit_settings)
        return (*self.view(session), session.layers[-1].seed)

    @autosaved
    def replace(self, session, index, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1,
                settings: SettingsControls, progress=gr.Progress(track_tqdm=True)):
        """Re-edit the selected layer with the prompt, seed and settings in the controls; a mask painted
        on the canvas (or a box) replaces its mask, an empty canvas keeps it."""
        session = self._require_image(session, "re-edit a layer")
        index = self._index(session, index)
        edit_settings = settings.edit_settings()
        mask = None if index == 0 else mask_from_canvas(canvas, session.size, mask_mode, (x0, y0, x1, y1))
        progress(0, desc=f"re-painting layer {index} and replaying the layers above")
        session.replace(index, prompt=prompt or None, mask=mask, seed=pick_seed(seed_mode, seed), **edit_settings)
        return (*self.view(session, index), session.layers[index].seed)

    @autosaved
    def start_from_image(self, session, photo, prompt, seed_mode, seed, settings: SettingsControls,
                         progress=gr.Progress(track_tqdm=True)):
        if photo is None:
            raise ValueError("upload a photo first")
        session = self.session_or_new(session)
        edit_settings = settings.edit_settings()
        progress(0, desc="encoding the photo")
        session.start_from_image(photo, prompt or "", seed=pick_seed(seed_mode, seed), **edit_settings)
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
        shared = layer.kind == "edit" and bool(layer.info.get("shares_session_seed"))
        values = list(SettingsControls.of_layer(layer).values())
        if dict(layer.settings).get("guidance") not in guidance_choices(self.pipeline):
            values[SETTING_CONTROLS.index("guidance")] = gr.update()
        return (gr.update(value=index), layer.prompt, "session" if shared else "fixed", layer.seed, *values,
                gr.update(value=layer.visible, interactive=index > 0))

    def select_from_gallery(self, session, evt: gr.SelectData):
        return self.select_layer(session, evt.index)

    @staticmethod
    def guidance_changed(mode):
        """The negative-prompt textbox is disabled while distilled guidance (which has none) is chosen."""
        distilled = mode == "distilled"
        return gr.update(interactive=not distilled, info=f"disabled: {GUIDANCE_NOTE}" if distilled else None)

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
        return str(session.export(self._scratch_file("layered-edit-layers.zip")))

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
        index = whole_number("layer", index)
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
