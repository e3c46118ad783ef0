"""The app's event handlers: plain functions of component values that call editor.Session.

One pipeline is loaded once and shared by every browser session (the pipeline serialises its own calls);
each browser session has its own Session in a gr.State, so two tabs never see each other's layers. Every
change to a browser session is autosaved (ui/autosave.py) when the app has an autosave folder.

A handler returns (or, while the model runs, yields) {component name: value} for the components it changes
(names as in ui/layout.Components); the wiring turns the names into components. The model calls stream:
the app goes busy (buttons off, Cancel on), the image forming shows on the canvas every few steps, and the
last update shows the result, or, after Cancel or an error, the panels exactly as they were.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from editor import Session
from editor.session import nothing_drawn_limit
from memory import MemoryStateError
from pipelines import masks
from ui.autosave import Autosave
from ui.autosave import new_id as new_autosave_id
from ui.canvas import (
    canvas_value,
    display_scale,
    fit_photo,
    layer_name,
    layer_thumbnail,
    mask_from_canvas,
    upscale,
)
from ui.controls import (
    FAST_SCHEDULER,
    GUIDANCE_NOTE,
    NO_NEGATIVE_PROMPT,
    SETTING_CONTROLS,
    SettingsControls,
    default_settings,
    fast_steps,
    guidance_choices,
    guidance_labels,
    network_name,
    pick_seed,
    speed_note,
    variation_seeds,
    whole_number,
)
from ui.errors import show_warnings
from ui.prompts import check_prompt
from ui.runs import Cancelled, Runs, run_with_preview

log = logging.getLogger(__name__)

SCRATCH_MAX_AGE_S = 3600  # saved projects / exports are kept this long for the browser to download
# Buttons that start something: off while the model runs (so a double click cannot make two layers).
RUN_BUTTONS = ("generate_button", "edit_button", "variations_button", "replace_button", "remove_button",
               "undo_button", "redo_button", "reset_button", "photo_button", "photo_replace_button", "restore_button")
# What every change shows; the first outputs of every event that changes the session, in this order.
VIEW = ("state", "current", "layer_list", "selected_layer", "status", "undo_button", "redo_button", "canvas_key",
        "view_id")
RUN = (*VIEW, *(name for name in RUN_BUTTONS if name not in VIEW), "preview", "cancel_button")
STAGING = ("staging", "candidates", "discard_button")
UNCHANGED = {"status": gr.update()}  # an update that changes nothing (an empty one would read as one value)
OUTLINE_LEGEND = ", outlined: its object (solid yellow) and the area painted for it (dashed pink)"


@dataclass(frozen=True)
class Candidate:
    image: np.ndarray
    seed: int
    nothing_drawn: bool


@dataclass(frozen=True)
class Staging:
    """Variations waiting to be picked: what made them, and the stack they were made on."""

    prompt: str
    mask: object  # the bool mask or box the edit used
    settings: dict
    candidates: tuple[Candidate, ...]
    layers: tuple  # session.layers when they were made: a pick on another stack is refused

    def still_fits(self, session) -> bool:
        layers = session.layers if session is not None else ()
        return len(layers) == len(self.layers) and all(a is b for a, b in zip(layers, self.layers, strict=True))


def nothing_drawn(info) -> bool:
    """An edit that left its region essentially unchanged (the rule of editor.NothingDrawnWarning)."""
    return "changed_pixels" in info and info["changed_pixels"] < nothing_drawn_limit(info["region_pixels"])


def png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


class Handlers:
    """The app's event handlers: plain functions of component values that call editor.Session.

    `session` is the browser session's gr.State value: None until its first action, then a Session on the
    shared pipeline. With an `autosave` folder, every handler that changes a session saves it there.
    """

    def __init__(self, pipeline, model: str | None = None, scratch: Path | None = None,
                 autosave: Autosave | None = None):
        self.pipeline = pipeline
        self.model = model
        self.defaults = default_settings(pipeline)  # what the settings controls start from
        self.scratch = Path(scratch or tempfile.mkdtemp(prefix="layered-edit-ui-"))
        self.autosave = autosave
        self.runs = Runs()
        self.live_sessions: weakref.WeakSet[Session] = weakref.WeakSet()  # every Session made here and not freed
        self._autosave_ids: weakref.WeakKeyDictionary[Session, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._canvas_keys = itertools.count()
        self._view_ids = itertools.count(1)
        self._views: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()  # each one's last view

    # -------------------------------------------------------------- state and view
    def new_session(self) -> Session:
        return self._track(Session(self.pipeline, model=self.model))

    def session_or_new(self, session) -> Session:
        return session if session is not None else self.new_session()

    def view(self, session: Session | None, selected: int | None = None, message: str | None = None) -> dict:
        """What every change shows (VIEW): the image, the layer list with `selected` (default: the top layer),
        the status line (`message`, then the stack in brief), undo/redo, and a new canvas key (the canvas is
        refreshed by its own event: an ImageEditor that is an event's input and output loses its strokes)."""
        layers = session.layers if session is not None else ()
        view_id = next(self._view_ids)
        if session is not None:
            self._views[session] = view_id
        update = {"state": session, "view_id": view_id,
                  "undo_button": gr.update(interactive=bool(session and session.can_undo)),
                  "redo_button": gr.update(interactive=bool(session and session.can_redo))}
        if not layers:
            return {**update, "current": None, "layer_list": [], "selected_layer": None,
                    "canvas_key": self._canvas_key(None),
                    "status": message or "No image yet: write a prompt and **Generate background**, or start from a "
                                         "photo."}
        if selected is None or not 0 <= selected < len(layers):
            selected = len(layers) - 1
        width, height = session.size
        stack = (f"{plural(len(layers), 'layer')} · {width}x{height} px · shown at {display_scale(session.size)}x"
                 f" · layer {selected} selected" + (OUTLINE_LEGEND if layers[selected].kind == "edit" else ""))
        return {**update, "current": session.image, "layer_list": self.layer_rows(layers, selected),
                "selected_layer": selected, "canvas_key": self._canvas_key(selected),
                "status": f"{message}  \n{stack}" if message else stack}

    @staticmethod
    def layer_rows(layers, selected: int) -> list[dict]:
        """The layer list's value: per layer its index, name, visibility, thumbnail; hidden/shown on a toggle."""
        return [{"index": index, "name": layer_name(layer), "visible": layer.visible, "selected": index == selected,
                 "toggle": index > 0, "thumb": png_data_uri(layer_thumbnail(layer))}
                for index, layer in enumerate(layers)]

    def _canvas_key(self, selected: int | None) -> tuple[int, int | None]:
        """A new value for the canvas key or the selection key (a change refreshes the canvas), carrying the
        layer to outline: the refresh event reads it rather than the selection, which the browser may not have
        updated yet."""
        return next(self._canvas_keys), selected

    @staticmethod
    def canvas(session, canvas_key, strokes=None) -> dict | None:
        """The canvas showing the session's current image (upscaled) with the masks of the layer the key names
        outlined, and the strokes of the canvas value `strokes` (a selection) or none (a new image)."""
        if session is None or not session.layers:
            return None
        selected = canvas_key[1] if canvas_key else None
        layer = session.layers[selected] if selected is not None and 0 <= selected < len(session.layers) else None
        return canvas_value(session.image, layer, strokes)

    # -------------------------------------------------------------- creating layers
    def generate(self, session, prompt, seed_mode, seed, settings: SettingsControls, view=None):
        if self._repeated(session, view):
            yield UNCHANGED
            return
        self._require_prompt(prompt, "generate a background")
        session = self.session_or_new(session)
        chosen = pick_seed(seed_mode, seed)
        if chosen is None and seed is not None:  # "session noise" for a new background: the number shown
            chosen = whole_number("seed", seed)
        values = self._edit_settings(settings)

        def work(cancel):
            yield from self._stream(lambda callback: session.generate(
                prompt, seed=chosen, callback_on_step_end=callback, **values),
                                    values["num_inference_steps"], f"Painting the background '{prompt}'", cancel)
            top = session.layers[-1]
            cost = speed_note(top.info, network_name(session.pipeline))
            message = f"Painted the background '{prompt}' (seed {top.seed}) · {cost}."
            return {**self.view(session, 0, message), "seed": top.seed}

        yield from self._running(session, work, f"Painting the background '{prompt}'")

    def edit(self, session, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, settings: SettingsControls,
             view=None):
        if self._repeated(session, view):
            yield UNCHANGED
            return
        session = self._require_image(session, "edit")
        self._require_prompt(prompt, "edit")
        values = self._edit_settings(settings)
        mask = self._mask(canvas, session, mask_mode, (x0, y0, x1, y1))
        chosen = pick_seed(seed_mode, seed)
        area = self._area(session, mask)

        def work(cancel):
            yield from self._stream(lambda callback: session.edit(prompt, mask, seed=chosen,
                                                                  callback_on_step_end=callback, **values),
                                    values["num_inference_steps"], f"Painting '{prompt}'", cancel, area)
            index = len(session.layers) - 1
            return {**self.view(session, index, self._edit_report(session, index, "Painted")),
                    "seed": session.layers[index].seed}

        yield from self._running(session, work, f"Painting '{prompt}'")

    def submit(self, session, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1,
               settings: SettingsControls, view=None):
        """Enter in the prompt box: edit in the painted area, or generate a background when there is no image."""
        if session is None or not session.layers:
            yield from self.generate(session, prompt, seed_mode, seed, settings, view)
        else:
            yield from self.edit(session, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, settings, view)

    def replace(self, session, index, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, regenerate_above,
                settings: SettingsControls, view=None):
        """Re-edit the selected layer with the prompt, seed and settings in the controls; a mask painted on the
        canvas (or a box) replaces its mask, an empty canvas keeps it. The layers above stay as they were
        unless `regenerate_above`."""
        if self._repeated(session, view):
            yield UNCHANGED
            return
        session = self._require_image(session, "re-edit a layer")
        index = self._index(session, index)
        values = self._edit_settings(settings)
        mask = None if index == 0 else mask_from_canvas(canvas, session.size, mask_mode, (x0, y0, x1, y1))
        layers_above = "regenerate" if regenerate_above else "keep"
        above = len(session.layers) - index - 1
        area = None if index == 0 else self._area(session, mask if mask is not None else
                                                  np.asarray(session.layers[index].user_mask) > 0)
        doing = f"Re-painting layer {index}" + (f" and regenerating the {plural(above, 'layer')} above"
                                                if above and regenerate_above else "")

        def work(cancel):
            yield from self._stream(lambda callback: session.replace(
                index, prompt=prompt or None, mask=mask, seed=pick_seed(seed_mode, seed), layers_above=layers_above,
                callback_on_step_end=callback, **values), values["num_inference_steps"], doing, cancel, area)
            how = "were regenerated" if regenerate_above else "kept as they were"
            kept = f" The {plural(above, 'layer')} above {how}." if above else ""
            return {**self.view(session, index, self._edit_report(session, index, "Re-edited") + kept),
                    "seed": session.layers[index].seed}

        yield from self._running(session, work, doing)

    def variations(self, session, canvas, prompt, seed_mode, seed, mask_mode, x0, y0, x1, y1, count,
                   settings: SettingsControls, view=None):
        """Several candidates of one edit (seeds), shown side by side; none becomes a layer until picked."""
        if self._repeated(session, view):
            yield UNCHANGED
            return
        session = self._require_image(session, "make variations")
        self._require_prompt(prompt, "make variations")
        values = self._edit_settings(settings)
        mask = self._mask(canvas, session, mask_mode, (x0, y0, x1, y1))
        seeds = variation_seeds(seed_mode, seed, count)
        area = self._area(session, mask)

        def work(cancel):
            made = []
            yield {"candidates": gr.update(value=[], visible=True), "discard_button": gr.update(visible=False)}
            for number, chosen in enumerate(seeds, start=1):
                record = yield from self._stream(
                    lambda callback, chosen=chosen: session.preview_edit(prompt, mask, seed=chosen,
                                                                         callback_on_step_end=callback, **values),
                    values["num_inference_steps"], f"Variation {number} of {len(seeds)} of '{prompt}'", cancel, area)
                made.append(Candidate(np.asarray(record.image), chosen, nothing_drawn(record.info)))
                del record  # only the image is kept: the candidate's memory goes now
                yield {"candidates": gr.update(value=self._candidate_items(made))}
            staging = Staging(prompt, mask, values, tuple(made), session.layers)
            message = (f"{plural(len(made), 'variation')} of '{prompt}': click one to keep it as layer "
                       f"{len(session.layers)}; the others are dropped.")
            # The last update names every output the run changed: gradio streams the updates between as diffs,
            # and a browser that missed one shows the candidates it was last sent in full.
            return {"staging": staging, "candidates": gr.update(value=self._candidate_items(made), visible=True),
                    "discard_button": gr.update(visible=True), "status": message}

        yield from self._running(session, work, f"Variations of '{prompt}'", clean=self._dropped(), changes=False)

    def pick_candidate(self, session, staging, index):
        """Keep candidate `index` of the staged variations as a layer: the edit runs again with its seed (the
        pipeline is deterministic, so the layer is the candidate); the other candidates are dropped."""
        if staging is None:
            raise ValueError("make variations first")
        index = whole_number("variation", index)
        if not 0 <= index < len(staging.candidates):
            raise IndexError(f"there is no variation {index}")
        if not staging.still_fits(session):
            gr.Warning("The image changed since these variations were made: make them again.")
            yield {**self._dropped(), "status": "The variations were dropped: the image changed since they were made."}
            return
        candidate = staging.candidates[index]

        def work(cancel):
            yield from self._stream(lambda callback: session.edit(
                staging.prompt, staging.mask, seed=candidate.seed, callback_on_step_end=callback, **staging.settings),
                staging.settings["num_inference_steps"], f"Keeping variation {index + 1}", cancel,
                self._area(session, staging.mask))
            top = len(session.layers) - 1
            if not np.array_equal(np.asarray(session.layers[top].image), candidate.image):
                log.warning("variation %d (seed %d) painted differently when kept", index + 1, candidate.seed)
            message = self._edit_report(session, top, f"Kept variation {index + 1} (seed {candidate.seed}) as")
            return {**self.view(session, top, message), **self._dropped(), "seed": candidate.seed}

        yield from self._running(session, work, f"Keeping variation {index + 1}")

    def pick_from_gallery(self, session, staging, evt: gr.SelectData):
        yield from self.pick_candidate(session, staging, evt.index)

    def discard(self, staging):
        return {**self._dropped(), "status": "Variations dropped." if staging is not None else gr.update()}

    def start_from_image(self, session, photo, photo_fit, prompt, seed_mode, seed, settings: SettingsControls,
                         view=None, replace: bool = False):
        """Start from a photo (cropped or fitted to the model's size). On a session with layers it first asks;
        `replace` is the answer. The old session's autosave is kept (the session saves under a new id)."""
        if self._repeated(session, view):
            return UNCHANGED
        if photo is None:
            raise ValueError("upload a photo first")
        values = self._edit_settings(settings)
        if session is not None and session.layers and not replace:
            return {"photo_confirm": gr.update(visible=True),
                    "status": "Starting from the photo replaces the current image "
                              f"({plural(len(session.layers), 'layer')}). Its autosave is kept (Restore lists it) "
                              "and Undo brings it back. Replace it?"}
        session = self.session_or_new(session)
        picture, note = fit_photo(photo, self.pipeline.default_size, photo_fit)
        if session.layers:
            with self._lock:
                self._autosave_ids[session] = new_autosave_id()  # the old autosave stays as it was
        session.start_from_image(picture, prompt or "", seed=pick_seed(seed_mode, seed), **values)
        self.autosave_session(session)
        return {**self.view(session, 0, f"Started from the photo: {note}."), "seed": session.layers[0].seed,
                "photo_confirm": gr.update(visible=False)}

    def replace_with_photo(self, session, photo, photo_fit, prompt, seed_mode, seed, settings: SettingsControls,
                           view=None):
        return self.start_from_image(session, photo, photo_fit, prompt, seed_mode, seed, settings, view, replace=True)

    @staticmethod
    def keep_editing():
        return {"photo_confirm": gr.update(visible=False), "status": "Kept the current image."}

    # -------------------------------------------------------------- changing the stack
    def set_visible(self, session, index, visible, regenerate_above=False, view=None):
        if self._repeated(session, view):
            return UNCHANGED
        session = self._require_image(session, "hide or show a layer")
        index = self._index(session, index)
        session.set_visible(index, bool(visible), layers_above="regenerate" if regenerate_above else "keep")
        self.autosave_session(session)
        layer = session.layers[index]
        return self.view(session, index, f"Layer {index} '{layer.prompt}' {'shown' if visible else 'hidden'}.")

    def toggle_from_list(self, session, regenerate_above, view, evt: gr.EventData):
        return self.set_visible(session, evt.index, evt.visible, regenerate_above, view)

    def remove(self, session, index, regenerate_above=False, view=None):
        if self._repeated(session, view):
            return UNCHANGED
        session = self._require_image(session, "remove a layer")
        index = self._index(session, index)
        prompt = session.layers[index].prompt
        session.remove(index, layers_above="regenerate" if regenerate_above else "keep")
        self.autosave_session(session)
        return self.view(session, min(index, len(session.layers) - 1), f"Removed layer {index} '{prompt}'.")

    def undo(self, session):
        session = self._require_image(session, "undo")
        done = session.undo()
        self.autosave_session(session)
        return self.view(session, None, f"Undid: {done}.")

    def redo(self, session):
        session = self.session_or_new(session)
        done = session.redo()
        self.autosave_session(session)
        return self.view(session, None, f"Redid: {done}.")

    def reset(self, session):
        return self.view(self.new_session(), None, "New session: write a prompt and **Generate background**, or "
                                                   "start from a photo.")

    def select_layer(self, session, index):
        """Fill the controls with a layer's prompt, seed and settings, ready to re-edit it; outline its masks."""
        session = self._require_image(session, "select a layer")
        index = self._index(session, index)
        layer = session.layers[index]
        shared = layer.kind == "edit" and bool(layer.info.get("shares_session_seed"))
        controls = dict(zip(SETTING_CONTROLS, SettingsControls.of_layer(layer).values(), strict=True))
        remembered = {}
        if controls["guidance"] not in guidance_choices(self.pipeline):
            controls["guidance"] = gr.update()
        elif controls["guidance"] != "fast":  # the layer's steps are shown: guidance_changed must not restore others
            remembered = {"steps_before_fast": None}
        hint = ("repaint it with a new prompt or seed" if index == 0 else
                "change the prompt, seed or settings (or paint a new area) and **Re-edit selected**")
        return {"selected_layer": index, "prompt": layer.prompt, "seed_mode": "session" if shared else "fixed",
                "seed": layer.seed, **{f"setting:{name}": value for name, value in controls.items()},
                "layer_list": self.layer_rows(session.layers, index), "selection_key": self._canvas_key(index),
                "status": f"Layer {index} '{layer.prompt}' selected: {hint}."
                          + (f"  \n{OUTLINE_LEGEND[2:].capitalize()}." if layer.kind == "edit" else ""), **remembered}

    def select_from_list(self, session, evt: gr.EventData):
        return self.select_layer(session, evt.index)

    def cancel(self, session):
        """Cancel: the running edit stops at its next step and commits nothing."""
        if self.runs.cancel(session):
            return {"status": "Cancelling…"}
        return UNCHANGED

    # -------------------------------------------------------------- small control events
    def guidance_changed(self, mode, steps, scheduler, steps_before_fast):
        """Distilled and fast guidance have no negative prompt: its textbox is disabled. Fast runs its adapter's
        own DDIM steps: the steps and scheduler show them, fixed; choosing another mode brings back the user's
        (`steps_before_fast`, else the defaults when the controls held the fast ones)."""
        no_negative = mode in NO_NEGATIVE_PROMPT
        update = {"setting:negative_prompt": gr.update(interactive=not no_negative,
                                                       info=f"disabled: {GUIDANCE_NOTE}" if no_negative else None)}
        fast = fast_steps(self.pipeline)
        if mode == "fast" and fast:
            own = (steps, scheduler) if (steps, scheduler) != (fast, FAST_SCHEDULER) else (
                self.defaults.num_inference_steps, self.defaults.scheduler)
            return {**update, "steps_before_fast": steps_before_fast or own,
                    "setting:num_inference_steps": gr.update(value=fast, interactive=False,
                                                             info=f"fast mode runs its adapter's {fast} steps"),
                    "setting:scheduler": gr.update(value=FAST_SCHEDULER, interactive=False,
                                                   info=f"fast mode samples with {FAST_SCHEDULER}")}
        steps, scheduler = steps_before_fast or (steps, scheduler)
        return {**update, "steps_before_fast": None,
                "setting:num_inference_steps": gr.update(value=steps, interactive=True, info=None),
                "setting:scheduler": gr.update(value=scheduler, interactive=True, info=None)}

    def cost_changed(self, steps, guidance_scale, mode, steps_before_fast):
        """The guidance choices say what an edit costs at the steps that mode runs (fast: its own; the others:
        the user's steps, kept aside while fast is chosen) and the guidance scale (CFG at <= 1 runs one pass)."""
        if mode == "fast":
            steps = steps_before_fast[0] if steps_before_fast else self.defaults.num_inference_steps
        scale = self.defaults.guidance_scale if guidance_scale is None else float(guidance_scale)
        return {"setting:guidance": gr.update(choices=guidance_labels(self.pipeline, int(steps or 0), scale))}

    @staticmethod
    def mask_mode_changed(mode):
        """The box numbers show only in box mode."""
        return gr.update(visible=mode == "box")

    def prompt_changed(self, prompt):
        """The line under the prompt box: tokens against the window, unknown words, an empty prompt."""
        return check_prompt(self.pipeline.tokenizer, prompt).markdown() if prompt else ""

    # -------------------------------------------------------------- project files
    def save(self, session):
        session = self._require_image(session, "save")
        return str(session.save(self._scratch_file("layered-edit-project.lep")))

    def load(self, session, upload):
        if upload is None:
            raise ValueError("choose a .lep project file to open")
        path = Path(upload if isinstance(upload, (str, os.PathLike)) else upload.name)
        if path.suffix.lower() != ".lep":
            raise ValueError(f"{path.name} is not a layered-edit project: choose a .lep file")
        loaded = self._open(path)
        self.autosave_session(loaded)
        return self.view(loaded, None, f"Opened {path.name}.")

    def export(self, session, export_format=".ora"):
        session = self._require_image(session, "export")
        return str(session.export(self._scratch_file(f"layered-edit-layers{export_format}")))

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

    def restore(self, session, choice):
        """Open an autosaved session in this tab; it goes on autosaving under the same id."""
        if self.autosave is None:
            raise ValueError("autosave is off in this app")
        if not choice:
            raise ValueError("choose an autosaved session to restore")
        restored = self._open(self.autosave.path(choice))  # the same untrusted-file path as an upload
        with self._lock:
            self._autosave_ids[restored] = choice
        self.autosave_session(restored)
        return {**self.view(restored, None, "Restored the autosaved session."),
                "restore_offer": gr.update(visible=False)}

    def session_closed(self, session) -> None:
        """gr.State's delete_callback: the tab closed (or idled past SESSION_IDLE_TTL_S); the Session is
        dropped by gradio and freed, its autosave stays on disk."""
        if session is not None:
            log.info("browser session closed: %d layers freed from memory", len(session.layers))

    # -------------------------------------------------------------- running the model
    def _running(self, session, work, doing: str, clean: dict | None = None, changes: bool = True):
        """Run `work(cancel)` (a generator of updates returning the final one) with the app busy: buttons off,
        Cancel on. After Cancel or an error the controls come back and nothing else changes (`clean`: what
        the work showed that must go again); the error is raised on for the wiring to report. The session is
        autosaved after work that `changes` it."""
        cancel = self.runs.start(session)
        idle = clean or {}
        try:
            yield {**self._controls(session, busy=True), "state": session, "status": f"{doing}…"}
            final = yield from work(cancel)
        except Cancelled as stopped:
            yield {**self._controls(session, busy=False), **idle,
                   "status": f"Cancelled at step {stopped.step}: nothing was committed."}
            return
        except Exception:
            yield {**self._controls(session, busy=False), **idle}
            raise
        finally:
            self.runs.finish(session)
        if changes:
            self.autosave_session(session)
        yield {**self._controls(session, busy=False), **final}

    def _controls(self, session, busy: bool) -> dict:
        controls = {name: gr.update(interactive=not busy) for name in RUN_BUTTONS}
        if not busy:
            controls["undo_button"] = gr.update(interactive=bool(session and session.can_undo))
            controls["redo_button"] = gr.update(interactive=bool(session and session.can_redo))
        return {**controls, "cancel_button": gr.update(visible=busy), "preview": gr.update(visible=False)}

    def _stream(self, call, steps: int, doing: str, cancel, area=None):
        """Run `call(callback_on_step_end)` with the image forming shown every few steps; returns its result.
        `area` (the image, a bool region): the preview shows the forming image there, the image elsewhere. The
        library's warnings raised meanwhile become toasts afterwards (except "nothing drawn": the handler says
        that in the status line)."""
        caught = []

        def watched(callback):
            with warnings.catch_warnings(record=True) as found:
                warnings.simplefilter("always")
                try:
                    return call(callback)
                finally:
                    caught.extend(found)

        previews = run_with_preview(watched, self.pipeline.decode_latents, steps, cancel)
        try:
            while True:
                try:
                    preview = next(previews)
                except StopIteration as done:
                    show_warnings(caught)
                    return done.value
                shown = preview.image if area is None else np.where(area[1][..., None], preview.image, area[0])
                yield {"preview": gr.update(value=shown, visible=True),  # the browser scales it up (CSS)
                       "status": f"{doing}: step {preview.step} of {preview.total}…"}
        finally:
            previews.close()  # the tab went away mid-run: the call is cancelled and awaited

    @staticmethod
    def _area(session, mask) -> tuple[np.ndarray, np.ndarray]:
        """(the current image, the region `mask` covers): where a preview shows the edit forming."""
        return np.asarray(session.image), masks.to_binary(mask, session.size)

    @staticmethod
    def _edit_report(session, index: int, verb: str) -> str:
        """The status after an edit of layer `index`; "Nothing was drawn" (with what to try) when it drew nothing."""
        layer = session.layers[index]
        info = layer.info
        if nothing_drawn(info):
            gr.Warning(f"Nothing was drawn for '{layer.prompt}': see the status line for what to try.",
                       title="Nothing was drawn")
            return (f"**Nothing was drawn** for '{layer.prompt}' (layer {index}): {info['changed_pixels']} of "
                    f"{info['region_pixels']} pixels changed. Try a larger area, another seed (Seed: random) or "
                    "**Make variations**; **Undo** removes the layer.")
        changed = f": {info['changed_pixels']} px changed" if "changed_pixels" in info else ""
        return f"{verb} layer {index} '{layer.prompt}'{changed} · {speed_note(info, network_name(session.pipeline))}."

    @staticmethod
    def _candidate_items(made) -> list:
        return [(upscale(c.image, max(1, 128 // max(c.image.shape[:2]))),
                 f"seed {c.seed}" + (" · nothing drawn" if c.nothing_drawn else "")) for c in made]

    @staticmethod
    def _dropped() -> dict:
        return {"staging": None, "candidates": gr.update(value=None, visible=False),
                "discard_button": gr.update(visible=False)}

    # -------------------------------------------------------------- internals
    def _edit_settings(self, settings: SettingsControls) -> dict:
        return settings.edit_settings(fast_steps(self.pipeline))

    def _open(self, path: Path) -> Session:
        loaded = self._track(Session.load(path, pipeline=self.pipeline))
        if self.model is not None and loaded.model not in (None, self.model):
            gr.Warning(f"this project was made with the model {loaded.model!r}; it is open on {self.model!r}")
        return loaded

    def _track(self, session: Session) -> Session:
        with self._lock:
            self.live_sessions.add(session)
        return session

    def _repeated(self, session, view) -> bool:
        """A click on an earlier view of this session: the second click of a double click (or Enter pressed
        twice), queued while the first one ran. Dropped, or it would do the same thing again."""
        if view is None or session is None or self._views.get(session) in (None, view):
            return False
        gr.Info("Ignored a second click made before the image changed (a double click?).")
        return True

    def _require_image(self, session, action: str) -> Session:
        if session is None or not session.layers:
            raise MemoryStateError(f"cannot {action}: there is no image yet; generate a background or start "
                                   "from a photo first")
        return session

    def _require_prompt(self, prompt, action: str) -> None:
        """An empty prompt is an error; unknown words are said before the model runs (and run anyway)."""
        if not prompt or not prompt.strip():
            raise ValueError(f"write a prompt to {action} (what should be painted)")
        unknown = check_prompt(self.pipeline.tokenizer, prompt).unknown
        if unknown:
            gr.Warning(f"Not words this model knows: {', '.join(repr(word) for word in unknown)}. See 'Words this "
                       "model knows' under the prompt.")

    @staticmethod
    def _mask(canvas, session, mask_mode, box):
        mask = mask_from_canvas(canvas, session.size, mask_mode, box)
        if mask is None:
            raise ValueError("paint the area to edit on the canvas first (or choose the box mask mode)")
        return mask

    @staticmethod
    def _index(session: Session, index) -> int:
        if index is None:
            raise ValueError("select a layer first (click it in the layer list)")
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
