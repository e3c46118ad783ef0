"""The app's event wiring: `wire_events` connects the components (ui/layout.py) to the handlers.

Every event's inputs are the handler's parameters in order; the API name of an event is the name of its
HTTP endpoint (`/generate`, `/edit`, ...), and its parameter names are the handler's, so they are stable.
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from ui.controls import SETTING_CONTROLS, SettingsControls
from ui.errors import friendly
from ui.handlers import Handlers
from ui.layout import Components

MODEL_EVENTS = {"concurrency_id": "pipeline", "concurrency_limit": 1}  # the pipeline runs one call at a time


def takes_settings(handler):
    """`handler` with its one `settings: SettingsControls` parameter spread into one parameter per settings
    control, as gradio passes them (and as the HTTP API names them); the adapter packs them again."""
    signature = inspect.signature(handler)
    parameters = list(signature.parameters.values())
    position = [parameter.name for parameter in parameters].index("settings")
    controls = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in SETTING_CONTROLS]
    spread = signature.replace(parameters=[*parameters[:position], *controls, *parameters[position + 1:]])

    @functools.wraps(handler)
    def adapter(*args, **kwargs):
        values = spread.bind(*args, **kwargs).arguments
        settings = SettingsControls(**{name: values.pop(name) for name in SETTING_CONTROLS})
        return handler(**values, settings=settings)

    adapter.__signature__ = spread
    adapter.__annotations__ = {name: hint for name, hint in handler.__annotations__.items() if name != "settings"}
    return adapter


def wire_events(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    """Connect every event of the app made by create_components inside `demo`."""
    _wire_layer_events(ui, handlers)
    _wire_stack_events(ui, handlers)
    _wire_file_events(demo, ui, handlers)
    layer_select, selection = ui.layer_select, ui.selection_outputs()
    layer_select.input(friendly(handlers.select_layer), [ui.state, layer_select], selection, api_name="select_layer")
    ui.gallery.select(friendly(handlers.select_from_gallery), [ui.state], selection, api_name=False)
    ui.settings["guidance"].change(handlers.guidance_changed, [ui.settings["guidance"]],
                                   [ui.settings["negative_prompt"]], api_name=False)
    ui.save_button.click(friendly(handlers.save), [ui.state], [ui.download], api_name="save")
    ui.export_button.click(friendly(handlers.export), [ui.state], [ui.download], api_name="export")


def _changes_view(ui: Components, handlers: Handlers, listener, handler, inputs: list, outputs: list | None = None,
                  **options) -> None:
    """Wire `handler` (its errors made friendly) to `listener`, showing the new view; after a success, a
    follow-up event shows the new image on the canvas, clearing the strokes (an ImageEditor that is both an
    event's input and its output loses its state in the browser)."""
    event = listener(friendly(handler), inputs, outputs or ui.view_outputs(), **options)
    event.success(handlers.canvas, [ui.state], [ui.canvas], show_progress="hidden", api_name=False, queue=False)


def _wire_layer_events(ui: Components, handlers: Handlers) -> None:
    """The events that make a layer: generate, edit, re-edit and start from a photo."""
    prompt_and_seed, mask = [ui.prompt, ui.seed_mode, ui.seed], [ui.mask_mode, *ui.box]
    settings, outputs = ui.setting_inputs(), [*ui.view_outputs(), ui.seed]
    for trigger, handler, inputs in (
            (ui.generate_button, handlers.generate, [ui.state, *prompt_and_seed, *settings]),
            (ui.edit_button, handlers.edit, [ui.state, ui.canvas, *prompt_and_seed, *mask, *settings]),
            (ui.replace_button, handlers.replace,
             [ui.state, ui.layer_select, ui.canvas, *prompt_and_seed, *mask, *settings]),
            (ui.photo_button, handlers.start_from_image, [ui.state, ui.photo, *prompt_and_seed, *settings])):
        _changes_view(ui, handlers, trigger.click, takes_settings(handler), inputs, outputs,
                      api_name=handler.__name__, **MODEL_EVENTS)


def _wire_stack_events(ui: Components, handlers: Handlers) -> None:
    """The events that change the stack of layers: hide/show, remove, undo, redo, new session."""
    _changes_view(ui, handlers, ui.layer_visible.input, handlers.set_visible,
                  [ui.state, ui.layer_select, ui.layer_visible], api_name="set_visible", **MODEL_EVENTS)
    _changes_view(ui, handlers, ui.remove_button.click, handlers.remove, [ui.state, ui.layer_select],
                  api_name="remove", **MODEL_EVENTS)
    _changes_view(ui, handlers, ui.undo_button.click, handlers.undo, [ui.state], api_name="undo")
    _changes_view(ui, handlers, ui.redo_button.click, handlers.redo, [ui.state], api_name="redo")
    _changes_view(ui, handlers, ui.reset_button.click, handlers.reset, [ui.state], api_name="new_session")


def _wire_file_events(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    """Opening a project, restoring an autosave, and freeing a closed tab's Session."""
    _changes_view(ui, handlers, ui.project_upload.upload, handlers.load, [ui.state, ui.project_upload],
                  api_name="load", **MODEL_EVENTS)
    _changes_view(ui, handlers, ui.restore_button.click, handlers.restore, [ui.state, ui.restore_choice],
                  [*ui.view_outputs(), ui.restore_offer], api_name="restore", **MODEL_EVENTS)
    demo.load(friendly(handlers.autosave_offer), None, [ui.restore_choice, ui.restore_offer], api_name="autosaves",
              queue=False, show_progress="hidden")

    def free_closed_session(request: gr.Request):
        """A closed (or reloaded) tab's Session is freed now rather than after gradio's hour of grace;
        the autosave keeps it restorable. Without gradio's state holder, time_to_live still frees it."""
        holder = getattr(demo, "state_holder", None)
        if holder is not None and request is not None and request.session_hash:
            holder.delete_state(request.session_hash)

    demo.unload(free_closed_session)
