"""The app's event wiring: `wire_events` connects the components (ui/layout.py) to the handlers.

Every event's inputs are the handler's parameters in order; the API name of an event is the name of its
HTTP endpoint (`/generate`, `/edit`, ...), and its parameter names are the handler's, so they are stable.
Handlers return {component name: value}; `_wire` turns the names into components, makes errors friendly,
and sends gradio's progress and error marks to a hidden component (the app shows progress itself: the
image forming on the canvas and the status line), so a failed event leaves every panel as it was.
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from ui.controls import SETTING_CONTROLS, SettingsControls
from ui.errors import friendly
from ui.handlers import RUN, STAGING, VIEW, Handlers
from ui.layout import Components

MODEL_EVENTS = {"concurrency_id": "pipeline", "concurrency_limit": 1}  # the pipeline runs one call at a time
SELECTION = ("selected_layer", "prompt", "seed_mode", "seed", *(f"setting:{name}" for name in SETTING_CONTROLS),
             "layer_list", "selection_key", "status", "steps_before_fast")


def takes_settings(handler):
    """`handler` with its one `settings: SettingsControls` parameter spread into one parameter per settings
    control, as gradio passes them (and as the HTTP API names them); the adapter packs them again."""
    signature = inspect.signature(handler)
    parameters = list(signature.parameters.values())
    position = [parameter.name for parameter in parameters].index("settings")
    controls = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in SETTING_CONTROLS]
    spread = signature.replace(parameters=[*parameters[:position], *controls, *parameters[position + 1:]])

    def packed(args, kwargs) -> dict:
        values = spread.bind(*args, **kwargs).arguments
        settings = SettingsControls(**{name: values.pop(name) for name in SETTING_CONTROLS})
        return {**values, "settings": settings}

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def adapter(*args, **kwargs):
            yield from handler(**packed(args, kwargs))
    else:
        @functools.wraps(handler)
        def adapter(*args, **kwargs):
            return handler(**packed(args, kwargs))

    adapter.__signature__ = spread
    adapter.__annotations__ = {name: hint for name, hint in handler.__annotations__.items() if name != "settings"}
    return adapter


def named_outputs(ui: Components, handler):
    """`handler` returning (or yielding) gradio's {component: value} for its {name: value}."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            for update in handler(*args, **kwargs):
                yield ui.by_component(update)

        return streaming

    @functools.wraps(handler)
    def call(*args, **kwargs):
        return ui.by_component(handler(*args, **kwargs))

    return call


def wire_events(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    """Connect every event of the app made by create_components inside `demo`."""
    _wire_layer_events(ui, handlers)
    _wire_stack_events(ui, handlers)
    _wire_file_events(demo, ui, handlers)
    _wire_control_events(ui, handlers)
    ui.canvas_key.change(handlers.canvas, [ui.state, ui.canvas_key], [ui.canvas], show_progress="hidden",
                         api_name=False, queue=False)
    # Only a selection reads the canvas (to keep its strokes): reading it means uploading it first, and a refresh
    # that waits for that upload would wipe strokes painted meanwhile after every new image.
    ui.selection_key.change(handlers.canvas, [ui.state, ui.selection_key, ui.canvas], [ui.canvas],
                            show_progress="hidden", api_name=False, queue=False)


def _wire(ui: Components, trigger, handler, inputs: list, outputs, settings: bool = False, view: bool = False,
          **options):
    """Wire `handler` to `trigger`: settings packed (then the view id, with `view`), names to components, errors
    friendly, gradio's marks on the hidden `activity` component. `trigger` is an event listener, or None for an
    HTTP-API-only endpoint."""
    fn = named_outputs(ui, friendly(takes_settings(handler) if settings else handler))
    options = {"show_progress_on": [ui.activity], **options}
    inputs = [*inputs, *(ui.setting_inputs() if settings else []), *([ui.view_id] if view else [])]
    if trigger is None:
        return gr.on(triggers=[], fn=fn, inputs=inputs, outputs=ui.named(outputs), **options)
    return trigger(fn, inputs, ui.named(outputs), **options)


def _wire_layer_events(ui: Components, handlers: Handlers) -> None:
    """The events that run the model: generate, edit (also Enter), re-edit, variations and picking one."""
    prompt_and_seed, mask = [ui.prompt, ui.seed_mode, ui.seed], [ui.mask_mode, *ui.box]
    with_seed = (*RUN, "seed")
    for trigger, handler, inputs in (
            (ui.generate_button.click, handlers.generate, [ui.state, *prompt_and_seed]),
            (ui.edit_button.click, handlers.edit, [ui.state, ui.canvas, *prompt_and_seed, *mask]),
            (ui.prompt.submit, handlers.submit, [ui.state, ui.canvas, *prompt_and_seed, *mask]),
            (ui.replace_button.click, handlers.replace,
             [ui.state, ui.selected_layer, ui.canvas, *prompt_and_seed, *mask, ui.regenerate_above])):
        _wire(ui, trigger, handler, inputs, with_seed, settings=True, view=True, api_name=handler.__name__,
              **MODEL_EVENTS)
    _wire(ui, ui.variations_button.click, handlers.variations,
          [ui.state, ui.canvas, *prompt_and_seed, *mask, ui.variations], (*RUN, *STAGING, "status"), settings=True,
          view=True, api_name="variations", **MODEL_EVENTS)
    _wire(ui, ui.candidates.select, handlers.pick_from_gallery, [ui.state, ui.staging], (*RUN, *STAGING, "seed"),
          api_name=False, **MODEL_EVENTS)
    _wire(ui, ui.discard_button.click, handlers.discard, [ui.staging], (*STAGING, "status"), api_name=False)
    ui.cancel_button.click(named_outputs(ui, handlers.cancel), [ui.state], [ui.status], queue=False,
                           show_progress="hidden", api_name="cancel")


def _wire_stack_events(ui: Components, handlers: Handlers) -> None:
    """The events that change the stack of layers: select, hide/show, remove, undo, redo, new session."""
    _wire(ui, ui.layer_list.select, handlers.select_from_list, [ui.state], SELECTION, api_name=False)
    _wire(ui, None, handlers.select_layer, [ui.state, ui.selected_layer], SELECTION, api_name="select_layer")
    _wire(ui, ui.layer_list.input, handlers.toggle_from_list, [ui.state, ui.regenerate_above, ui.view_id], VIEW,
          api_name=False, **MODEL_EVENTS)
    _wire(ui, None, handlers.set_visible, [ui.state, ui.selected_layer, ui.layer_visible, ui.regenerate_above], VIEW,
          view=True, api_name="set_visible", **MODEL_EVENTS)
    _wire(ui, ui.remove_button.click, handlers.remove, [ui.state, ui.selected_layer, ui.regenerate_above], VIEW,
          view=True, api_name="remove", **MODEL_EVENTS)
    _wire(ui, ui.undo_button.click, handlers.undo, [ui.state], VIEW, api_name="undo")
    _wire(ui, ui.redo_button.click, handlers.redo, [ui.state], VIEW, api_name="redo")
    _wire(ui, ui.reset_button.click, handlers.reset, [ui.state], VIEW, api_name="new_session")


def _wire_file_events(demo: gr.Blocks, ui: Components, handlers: Handlers) -> None:
    """Photos, project files, restoring an autosave, and freeing a closed tab's Session."""
    photo_inputs = [ui.state, ui.photo, ui.photo_fit, ui.prompt, ui.seed_mode, ui.seed]
    photo_outputs = (*VIEW, "seed", "photo_confirm")
    _wire(ui, ui.photo_button.click, handlers.start_from_image, photo_inputs, photo_outputs, settings=True,
          view=True, api_name="start_from_image", **MODEL_EVENTS)
    _wire(ui, ui.photo_replace_button.click, handlers.replace_with_photo, photo_inputs, photo_outputs, settings=True,
          view=True, api_name=False, **MODEL_EVENTS)
    _wire(ui, ui.photo_keep_button.click, handlers.keep_editing, [], ("photo_confirm", "status"), api_name=False)
    _wire(ui, ui.project_upload.upload, handlers.load, [ui.state, ui.project_upload], VIEW, api_name="load",
          **MODEL_EVENTS)
    _wire(ui, ui.restore_button.click, handlers.restore, [ui.state, ui.restore_choice], (*VIEW, "restore_offer"),
          api_name="restore", **MODEL_EVENTS)
    ui.save_button.click(friendly(handlers.save), [ui.state], [ui.download], api_name="save",
                         show_progress_on=[ui.activity])
    ui.export_button.click(friendly(handlers.export), [ui.state, ui.export_format], [ui.download],
                           api_name="export", show_progress_on=[ui.activity])
    demo.load(friendly(handlers.autosave_offer), None, [ui.restore_choice, ui.restore_offer], api_name="autosaves",
              queue=False, show_progress="hidden")

    def free_closed_session(request: gr.Request):
        """A closed (or reloaded) tab's Session is freed now rather than after gradio's hour of grace;
        the autosave keeps it restorable. Without gradio's state holder, time_to_live still frees it."""
        holder = getattr(demo, "state_holder", None)
        if holder is not None and request is not None and request.session_hash:
            holder.delete_state(request.session_hash)

    demo.unload(free_closed_session)


def _wire_control_events(ui: Components, handlers: Handlers) -> None:
    """Controls that change other controls: the prompt's token count, the box numbers, and the guidance mode's
    negative prompt, steps and scheduler (and the guidance choices' costs, which follow the steps and the scale)."""
    ui.prompt.change(handlers.prompt_changed, [ui.prompt], [ui.prompt_check], queue=False, show_progress="hidden",
                     api_name="check_prompt")
    ui.mask_mode.change(handlers.mask_mode_changed, [ui.mask_mode], [ui.box_row], queue=False,
                        show_progress="hidden", api_name=False)
    guidance, steps = ui.settings["guidance"], ui.settings["num_inference_steps"]
    _wire(ui, guidance.change, handlers.guidance_changed,
          [guidance, steps, ui.settings["scheduler"], ui.steps_before_fast],
          ("setting:negative_prompt", "setting:num_inference_steps", "setting:scheduler", "steps_before_fast"),
          api_name=False, queue=False)
    for control in (steps, ui.settings["guidance_scale"]):
        _wire(ui, control.change, handlers.cost_changed,
              [steps, ui.settings["guidance_scale"], guidance, ui.steps_before_fast], ("setting:guidance",),
              api_name=False, queue=False)
