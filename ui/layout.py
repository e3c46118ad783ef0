"""The app's layout: `create_components` makes every component (no events here; see ui/events.py).

One function per panel, each returning its components by name; `Components` holds them all, so the wiring
names a component rather than a position in a list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from editor import EditSettings
from editor import settings as settings_module
from ui.canvas import CANVAS_TARGET, brush_size, display_scale
from ui.controls import GUIDANCE_NOTE, MASK_MODES, MAX_UI_SEED, SEED_MODES, SETTING_CONTROLS, guidance_choices

SESSION_IDLE_TTL_S = 24 * 3600  # a tab's Session is freed after a day without a change (its autosave stays)
INTRO = ("## layered-edit\nEvery edit is a layer: paint a mask, describe what goes there, click **Edit in mask**. "
         "Outside the mask the image stays bit-identical; click a layer to re-edit, hide or remove it.")


@dataclass(frozen=True)
class Components:
    """Every component an event reads or writes. `settings` holds the settings controls by name, in
    SETTING_CONTROLS order; `box` the four box numbers x0, y0, x1, y1."""

    state: gr.State
    restore_offer: gr.Row
    restore_choice: gr.Dropdown
    restore_button: gr.Button
    canvas: gr.ImageEditor
    mask_mode: gr.Radio
    box: tuple[gr.Number, gr.Number, gr.Number, gr.Number]
    status: gr.Markdown
    prompt: gr.Textbox
    seed_mode: gr.Radio
    seed: gr.Number
    generate_button: gr.Button
    edit_button: gr.Button
    gallery: gr.Gallery
    layer_select: gr.Dropdown
    layer_visible: gr.Checkbox
    replace_button: gr.Button
    remove_button: gr.Button
    undo_button: gr.Button
    redo_button: gr.Button
    reset_button: gr.Button
    settings: dict[str, gr.components.Component]
    photo: gr.Image
    photo_button: gr.Button
    save_button: gr.Button
    export_button: gr.Button
    download: gr.File
    current: gr.Image
    project_upload: gr.File

    def setting_inputs(self) -> list:
        return [self.settings[name] for name in SETTING_CONTROLS]

    def view_outputs(self) -> list:
        """What Handlers.view returns, in its order."""
        return [self.state, self.current, self.gallery, self.layer_select, self.layer_visible, self.status,
                self.undo_button, self.redo_button]

    def selection_outputs(self) -> list:
        """What Handlers.select_layer fills, in its order."""
        return [self.layer_select, self.prompt, self.seed_mode, self.seed, *self.setting_inputs(), self.layer_visible]


def create_components(pipeline, session_closed: Callable) -> Components:
    """Lay out the app inside the current gr.Blocks for `pipeline` (its image size and guidance modes).
    `session_closed` is called with a tab's Session when gradio drops it."""
    defaults = EditSettings()
    state = gr.State(None, time_to_live=SESSION_IDLE_TTL_S, delete_callback=session_closed)
    gr.Markdown(INTRO)
    restore = _restore_row()
    with gr.Row():
        with gr.Column(scale=4):
            canvas = _canvas_column(pipeline.default_size)
        with gr.Column(scale=3):
            layers = _layer_column(defaults)
    settings = {"negative_prompt": layers.pop("negative_prompt"), **_settings_panel(defaults, pipeline)}
    files = _files_panel()
    return Components(state=state, **restore, **canvas, **layers, **files,
                      settings={name: settings[name] for name in SETTING_CONTROLS})


def _restore_row() -> dict:
    with gr.Row(visible=False, equal_height=True, elem_id="restore-offer") as restore_offer:
        restore_choice = gr.Dropdown([], label="Restore last session (autosaved: time, layers, first prompt)",
                                     elem_id="restore-choice", interactive=True, scale=4)
        restore_button = gr.Button("Restore", variant="primary", elem_id="restore", scale=1, min_width=90)
    return {"restore_offer": restore_offer, "restore_choice": restore_choice, "restore_button": restore_button}


def _canvas_column(size: tuple[int, int]) -> dict:
    width, height = size
    scale = display_scale(size)
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
        box = (gr.Number(0, label="box x0", precision=0, minimum=0, min_width=70, scale=1),
               gr.Number(0, label="y0", precision=0, minimum=0, min_width=70, scale=1),
               gr.Number(width // 2, label="x1", precision=0, minimum=0, min_width=70, scale=1),
               gr.Number(height // 2, label="y1", precision=0, minimum=0, min_width=70, scale=1))
    status = gr.Markdown(elem_id="status", label="Status")
    return {"canvas": canvas, "mask_mode": mask_mode, "box": box, "status": status}


def _layer_column(defaults: EditSettings) -> dict:
    """Prompt, seed, the generating buttons and the layer panel (the negative prompt goes to `settings`)."""
    found = {"prompt": gr.Textbox(label="Prompt", placeholder="a red star", lines=1, elem_id="prompt"),
             "negative_prompt": gr.Textbox(defaults.negative_prompt, label="Negative prompt", elem_id="negative")}
    with gr.Row(equal_height=True):
        found["seed_mode"] = gr.Radio(SEED_MODES, value="session", label="Seed", scale=3,
                                      info="session noise: edits reuse the background's noise")
        found["seed"] = gr.Number(7, label="Seed number", precision=0, minimum=0, maximum=MAX_UI_SEED, scale=1,
                                  min_width=90)
    with gr.Row():
        found["generate_button"] = gr.Button("Generate background", elem_id="generate")
        found["edit_button"] = gr.Button("Edit in mask", variant="primary", elem_id="edit")
    found["gallery"] = gr.Gallery(label="Layers (click one to select it)", elem_id="layers", columns=4,
                                  height=190, format="png", allow_preview=False, object_fit="contain",
                                  interactive=False, fit_columns=False)
    found["layer_select"] = gr.Dropdown([], label="Selected layer", elem_id="layer-select", interactive=True)
    with gr.Row(equal_height=True):
        found["layer_visible"] = gr.Checkbox(True, label="Visible", interactive=False, elem_id="layer-visible",
                                             min_width=90)
        found["replace_button"] = gr.Button("Re-edit selected", elem_id="replace", min_width=90)
        found["remove_button"] = gr.Button("Remove selected", variant="stop", elem_id="remove", min_width=90)
    with gr.Row():
        found["undo_button"] = gr.Button("Undo", interactive=False, elem_id="undo", min_width=60)
        found["redo_button"] = gr.Button("Redo", interactive=False, elem_id="redo", min_width=60)
        found["reset_button"] = gr.Button("New session", elem_id="new-session", min_width=60)
    return found


def _settings_panel(defaults: EditSettings, pipeline) -> dict:
    """The settings controls except the negative prompt (which sits under the prompt)."""
    guidance_modes = guidance_choices(pipeline)
    with gr.Accordion("Settings (used by generate, edit and re-edit)", open=True):
        with gr.Row():
            found = {
                "num_inference_steps": gr.Slider(1, 100, defaults.num_inference_steps, step=1, label="Steps"),
                "guidance_scale": gr.Slider(0, 20, defaults.guidance_scale, step=0.5, label="Guidance scale"),
                "scheduler": gr.Dropdown(sorted(settings_module.SCHEDULERS), value=defaults.scheduler,
                                         label="Scheduler"),
                "guidance": gr.Radio(
                    guidance_modes, value=defaults.guidance, label="Guidance mode",
                    interactive=len(guidance_modes) > 1,
                    info=GUIDANCE_NOTE if len(guidance_modes) > 1 else "this model has no distilled adapter"),
                "free_steps_ratio": gr.Slider(0, 1, defaults.free_steps_ratio, step=0.05,
                                              label="BCG free-steps ratio")}
        with gr.Row():
            found.update({
                "attention": gr.Radio(list(settings_module.ATTENTION_MODES), value=defaults.attention,
                                      label="Attention (MQD)"),
                "background": gr.Radio(list(settings_module.BACKGROUND_SOURCES), value=defaults.background,
                                       label="Background source"),
                "preserve": gr.Radio(list(settings_module.PRESERVE_MODES), value=defaults.preserve,
                                     label="Preserve"),
                "mask_dilation": gr.Slider(0, 32, defaults.mask_dilation, step=1, label="Mask dilation (px)"),
                "mask_feather": gr.Slider(0, 32, defaults.mask_feather, step=1, label="Mask feather (px)")})
    return found


def _files_panel() -> dict:
    found = {}
    with gr.Accordion("Photo and project files", open=False), gr.Row():
        found["photo"] = gr.Image(label="Start from a photo (the prompt describes it)", type="pil", image_mode=None,
                                  sources=["upload", "clipboard"], format="png", height=200)
        with gr.Column():
            found["photo_button"] = gr.Button("Start from photo")
            found["save_button"] = gr.Button("Save project (.lep)")
            found["export_button"] = gr.Button("Export layers (PNG + manifest .zip)")
            found["download"] = gr.File(label="Download", interactive=False, elem_id="download")
        found["current"] = gr.Image(label="Current image (actual pixels)", type="pil", format="png",
                                    interactive=False, height=200, elem_id="current", elem_classes=["pixelated"])
        found["project_upload"] = gr.File(label="Open project (.lep)", file_types=[".lep"], type="filepath",
                                          elem_id="open-project")
    return found
