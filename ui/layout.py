"""The app's layout: `create_components` makes every component (no events here; see ui/events.py).

One function per panel, each returning its components by name; `Components` holds them all, so the wiring
and the handlers name a component rather than a position in a list (handlers return {name: value}).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr

from editor import EditSettings
from editor import settings as settings_module
from editor.export import EXPORT_FORMATS
from ui.canvas import CANVAS_TARGET, PHOTO_FITS, brush_size, display_scale
from ui.controls import (
    GUIDANCE_NOTE,
    MASK_MODE_CHOICES,
    MAX_UI_SEED,
    MAX_VARIATIONS,
    NO_NEGATIVE_PROMPT,
    SEED_MODES,
    SETTING_CONTROLS,
    default_settings,
    guidance_choices,
    guidance_labels,
    scheduler_choices,
)
from ui.prompts import closed_vocabulary, vocabulary_markdown

SESSION_IDLE_TTL_S = 24 * 3600  # a tab's Session is freed after a day without a change (its autosave stays)
INTRO = ("## layered-edit\nEvery edit is a layer: scribble where something goes, describe it, press **Enter** or "
         "**Edit in mask**. Outside the scribbled area the image stays bit-identical; click a layer to re-edit, "
         "hide or remove it.")
VARIATIONS = 4  # candidates made by default
EXPORT_LABELS = {".ora": "OpenRaster .ora (Krita, GIMP)", ".psd": "Photoshop .psd", ".zip": "PNGs + manifest .zip"}

# The layer list: a row per layer, top layer first, as painting programs show it. Values are escaped by the
# template; clicks are delegated from the list (its rows are re-rendered on every change).
EYE = '<svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"><path d="M1 12s4-7 11-7 11 7 11 7-4 7-11 '
EYE_OPEN = (EYE + '7S1 12 1 12z" fill="none" stroke="currentColor" stroke-width="2"/><circle cx="12" cy="12" r="3" '
            'fill="currentColor"/></svg>')
EYE_SHUT = (EYE + '7S1 12 1 12z" fill="none" stroke="currentColor" stroke-width="2" opacity="0.5"/>'
            '<path d="M3 3l18 18" stroke="currentColor" stroke-width="2.5"/></svg>')
LAYER_LIST_TEMPLATE = """<ol class="layer-list" aria-label="Layers">{{#each value}}
<li class="layer{{#if selected}} selected{{/if}}{{#unless visible}} hidden{{/unless}}" data-index="{{index}}"
    title="click to select this layer">
<img class="thumb" src="{{thumb}}" alt="">
<span class="name">{{index}}: {{name}}{{#unless visible}} <em>(hidden)</em>{{/unless}}</span>
{{#if toggle}}<button class="eye" type="button" aria-pressed="{{visible}}"
    title="{{#if visible}}visible: click to hide{{else}}hidden: click to show{{/if}}">""" + \
    "{{#if visible}}" + EYE_OPEN + " visible{{else}}" + EYE_SHUT + " hidden{{/if}}</button>{{/if}}\n</li>{{/each}}</ol>"
LAYER_LIST_JS = """element.addEventListener('click', (event) => {
  const row = event.target.closest('.layer');
  if (!row) return;
  const index = Number(row.dataset.index);
  const eye = event.target.closest('.eye');
  if (eye) trigger('input', {index: index, visible: eye.getAttribute('aria-pressed') !== 'true'});
  else trigger('select', {index: index});
});"""
LAYER_LIST_CSS = """
.layer-list { list-style: none; margin: 0; padding: 0; display: flex; flex-direction: column-reverse; gap: 4px; }
.layer { display: flex; align-items: center; gap: 8px; padding: 4px; border-radius: 6px; cursor: pointer;
         border: 2px solid transparent; margin: 0; }
.layer:hover { background: var(--background-fill-secondary); }
.layer.selected { border-color: var(--color-accent); background: var(--background-fill-secondary); }
.layer.hidden .thumb, .layer.hidden .name { opacity: 0.45; }
.thumb { width: 48px; height: 48px; image-rendering: pixelated; border-radius: 4px; flex: none; margin: 0; }
.name { flex: 1; overflow-wrap: anywhere; }
.eye { flex: none; display: flex; align-items: center; gap: 4px; padding: 2px 6px;
       border: 1px solid var(--border-color-primary); border-radius: 4px;
       background: var(--button-secondary-background-fill); cursor: pointer; }
"""
ADVANCED_NOTES = {
    "free_steps_ratio": "Share of the last steps that run without the memory, so the edge blends in.",
    "attention": "MQD: each region hears only its own layer's prompt; the others are ablations.",
    "background": "memory: follow the stored trajectory (BCG); renoise: the no-memory baseline.",
    "preserve": "pixels: outside the mask stays bit-identical; latents: the paper's behaviour.",
    "bcg_mask": "How the mask is mapped to the latent grid for BCG.",
    "routing": "How MQD's regions are mapped onto each attention grid.",
}


@dataclass(frozen=True)
class Components:
    """Every component an event reads or writes, by name. `settings` holds the settings controls by name, in
    SETTING_CONTROLS order; `box` the four box numbers x0, y0, x1, y1."""

    state: gr.State
    staging: gr.State  # the variations waiting to be picked (ui.handlers.Staging) or None
    canvas_key: gr.State  # changes whenever the canvas must show the session's image anew (no strokes)
    selection_key: gr.State  # changes when a layer is selected: its outline shown, the strokes painted kept
    steps_before_fast: gr.State  # (steps, scheduler) the user had before choosing fast guidance, else None
    activity: gr.HTML  # hidden: gradio's own progress and error marks go here, never over a panel
    restore_offer: gr.Row
    restore_choice: gr.Dropdown
    restore_button: gr.Button
    canvas: gr.ImageEditor
    preview: gr.Image
    cancel_button: gr.Button
    mask_mode: gr.Radio
    box_row: gr.Row
    box: tuple[gr.Number, gr.Number, gr.Number, gr.Number]
    candidates: gr.Gallery
    discard_button: gr.Button
    status: gr.Markdown
    prompt: gr.Textbox
    prompt_check: gr.Markdown
    seed_mode: gr.Radio
    seed: gr.Number
    generate_button: gr.Button
    edit_button: gr.Button
    variations: gr.Slider
    variations_button: gr.Button
    layer_list: gr.HTML
    selected_layer: gr.Number
    layer_visible: gr.Checkbox
    view_id: gr.Number
    regenerate_above: gr.Checkbox
    replace_button: gr.Button
    remove_button: gr.Button
    undo_button: gr.Button
    redo_button: gr.Button
    reset_button: gr.Button
    settings: dict[str, gr.components.Component]
    photo: gr.Image
    photo_fit: gr.Radio
    photo_button: gr.Button
    photo_confirm: gr.Row
    photo_replace_button: gr.Button
    photo_keep_button: gr.Button
    save_button: gr.Button
    export_format: gr.Radio
    export_button: gr.Button
    download: gr.File
    current: gr.Image
    project_upload: gr.File

    def setting_inputs(self) -> list:
        return [self.settings[name] for name in SETTING_CONTROLS]

    def named(self, names) -> list:
        """The components of `names` (fields, or "setting:<name>" for a settings control)."""
        return [self.settings[name.split(":", 1)[1]] if name.startswith("setting:") else getattr(self, name)
                for name in names]

    def by_component(self, values: dict) -> dict:
        """A handler's {name: value} as gradio's {component: value}."""
        return dict(zip(self.named(values), values.values(), strict=True))

    def names(self) -> list[str]:
        return [field.name for field in dataclasses.fields(self) if field.name not in ("settings", "box")]


def create_components(pipeline, session_closed: Callable) -> Components:
    """Lay out the app inside the current gr.Blocks for `pipeline` (its image size, guidance modes and
    tokenizer). `session_closed` is called with a tab's Session when gradio drops it."""
    defaults = default_settings(pipeline)
    found = {"state": gr.State(None, time_to_live=SESSION_IDLE_TTL_S, delete_callback=session_closed),
             "staging": gr.State(None), "canvas_key": gr.State(None), "selection_key": gr.State(None),
             "steps_before_fast": gr.State(None),
             "activity": gr.HTML("", visible=False, elem_id="activity")}
    gr.Markdown(INTRO)
    found.update(_restore_row())
    with gr.Row():
        with gr.Column(scale=4, elem_id="canvas-column"):
            found.update(_canvas_column(pipeline.default_size))
        with gr.Column(scale=3):
            found.update(_prompt_panel(defaults, pipeline))
            with gr.Column(elem_id="layer-panel"):
                found.update(_layer_panel())
    settings = {"negative_prompt": found.pop("negative_prompt"), **_settings_panel(defaults, pipeline)}
    found.update(_files_panel())
    return Components(**found, settings={name: settings[name] for name in SETTING_CONTROLS})


def _restore_row() -> dict:
    with gr.Row(visible=False, equal_height=True, elem_id="restore-offer") as restore_offer:
        restore_choice = gr.Dropdown([], label="Restore last session (autosaved: time, layers, first prompt)",
                                     elem_id="restore-choice", interactive=True, scale=4)
        restore_button = gr.Button("Restore", variant="primary", elem_id="restore", scale=1, min_width=90)
    return {"restore_offer": restore_offer, "restore_choice": restore_choice, "restore_button": restore_button}


def _canvas_column(size: tuple[int, int]) -> dict:
    """The canvas with the live preview laid over it, Cancel, the mask mode, the candidates and the status."""
    width, height = size
    scale = display_scale(size)
    found = {}
    with gr.Group(elem_id="canvas-area"):
        found["canvas"] = gr.ImageEditor(
            label="Canvas: paint where the edit goes", show_label=False,  # a shown label covers the image
            elem_id="canvas", type="numpy", image_mode="RGBA",
            format="png", sources=(), transforms=(), interactive=True, height=CANVAS_TARGET + 110,
            canvas_size=(width * scale, height * scale),
            layers=gr.LayerOptions(allow_additional_layers=False, layers=["mask"]),
            brush=gr.Brush(colors=[("#ff2d75", 0.6)], default_color=("#ff2d75", 0.6), color_mode="fixed",
                           default_size=brush_size(scale)),
            eraser=gr.Eraser(default_size=brush_size(scale)),
            placeholder="Generate a background or start from a photo")
        found["preview"] = gr.Image(label="The edit forming", show_label=False, visible=False, interactive=False,
                                    type="numpy", format="png", elem_id="preview", elem_classes=["pixelated"],
                                    buttons=[])
    with gr.Row(equal_height=True):
        found["status"] = gr.Markdown(elem_id="status", label="Status")
        found["cancel_button"] = gr.Button("Cancel", variant="stop", visible=False, elem_id="cancel", scale=0,
                                           min_width=90)
    with gr.Row(equal_height=True):
        found["mask_mode"] = gr.Radio(MASK_MODE_CHOICES, value="scribble", label="Mask from", elem_id="mask-mode",
                                      info="a scribble means 'here': its filled outline, a little grown")
    with gr.Row(equal_height=True, visible=False) as box_row:
        found["box"] = tuple(gr.Number(value, label=label, precision=0, minimum=0, min_width=70, elem_id=f"box-{name}")
                             for name, label, value in (("x0", "box x0", 0), ("y0", "y0", 0),
                                                        ("x1", "x1", width // 2), ("y1", "y1", height // 2)))
    found["box_row"] = box_row
    found["candidates"] = gr.Gallery(label="Variations: click one to keep it as a layer", elem_id="candidates",
                                     columns=MAX_VARIATIONS // 2, height="auto", format="png", allow_preview=False,
                                     object_fit="contain", interactive=False, visible=False,
                                     elem_classes=["pixelated"])
    found["discard_button"] = gr.Button("Discard the variations", visible=False, elem_id="discard", size="sm")
    return found


def _prompt_panel(defaults: EditSettings, pipeline) -> dict:
    """Prompt (with its token count and, for a closed vocabulary, the known words), seed and the generating
    buttons. The negative prompt is returned too; it joins the settings."""
    found = {"prompt": gr.Textbox(label="Prompt (Enter runs it)", placeholder="a red circle", lines=1,
                                  max_lines=1, elem_id="prompt", submit_btn=False)}
    found["prompt_check"] = gr.Markdown(elem_id="prompt-check")
    words = closed_vocabulary(pipeline.tokenizer) if hasattr(pipeline, "tokenizer") else None
    if words is not None:
        with gr.Accordion("Words this model knows", open=False, elem_id="vocabulary"):
            gr.Markdown(vocabulary_markdown(words))
    no_negative = defaults.guidance in NO_NEGATIVE_PROMPT
    found["negative_prompt"] = gr.Textbox(defaults.negative_prompt, label="Negative prompt", elem_id="negative",
                                          interactive=not no_negative,
                                          info=f"disabled: {GUIDANCE_NOTE}" if no_negative else None)
    with gr.Row(equal_height=True):
        found["seed_mode"] = gr.Radio(SEED_MODES, value="session", label="Seed", scale=3, elem_id="seed-mode",
                                      info="session noise: edits reuse the background's noise")
        found["seed"] = gr.Number(7, label="Seed number", precision=0, minimum=0, maximum=MAX_UI_SEED, scale=1,
                                  min_width=90, elem_id="seed")
    with gr.Row(equal_height=True):
        found["generate_button"] = gr.Button("Generate background", elem_id="generate")
        found["edit_button"] = gr.Button("Edit in mask", variant="primary", elem_id="edit")
    with gr.Row(equal_height=True):
        found["variations"] = gr.Slider(2, MAX_VARIATIONS, VARIATIONS, step=1, label="Variations", scale=2,
                                        elem_id="variations-count")
        found["variations_button"] = gr.Button("Make variations", elem_id="variations", scale=1)
    return found


def _layer_panel() -> dict:
    gr.Markdown("**Layers** (top first): click one to select it, its eye to hide or show it",
                elem_id="layers-title")
    found = {"layer_list": gr.HTML([], html_template=LAYER_LIST_TEMPLATE, js_on_load=LAYER_LIST_JS,
                                   css_template=LAYER_LIST_CSS, elem_id="layers", container=True, padding=True,
                                   max_height=420)}
    # The selection and the visibility a layer-list click sets; hidden, but the HTTP API's parameters.
    found["selected_layer"] = gr.Number(None, label="layer", precision=0, visible=False)
    found["layer_visible"] = gr.Checkbox(True, label="visible", visible=False)
    # Which view of the session the browser shows: a click sends it, so a repeated click is recognised.
    found["view_id"] = gr.Number(None, label="view", precision=0, visible=False)
    found["regenerate_above"] = gr.Checkbox(
        False, label="Regenerate the layers above", elem_id="regenerate-above",
        info="off: re-edit, hide and remove keep the layers above as they were; on: their edits run again")
    with gr.Row(equal_height=True):
        found["replace_button"] = gr.Button("Re-edit selected", elem_id="replace", min_width=90)
        found["remove_button"] = gr.Button("Remove selected", variant="stop", elem_id="remove", min_width=90)
    with gr.Row():
        found["undo_button"] = gr.Button("Undo", interactive=False, elem_id="undo", min_width=60)
        found["redo_button"] = gr.Button("Redo", interactive=False, elem_id="redo", min_width=60)
        found["reset_button"] = gr.Button("New session", elem_id="new-session", min_width=60)
    return found


def _settings_panel(defaults: EditSettings, pipeline) -> dict:
    """The settings controls except the negative prompt (which sits under the prompt); the research settings
    in a collapsed Advanced section."""
    guidance_modes = guidance_choices(pipeline)
    with gr.Accordion("Settings (used by generate, edit and re-edit)", open=False, elem_id="settings"):
        with gr.Row():
            found = {
                "num_inference_steps": gr.Slider(1, 100, defaults.num_inference_steps, step=1, label="Steps"),
                "guidance_scale": gr.Slider(0, 20, defaults.guidance_scale, step=0.5, label="Guidance scale"),
                "scheduler": gr.Dropdown(scheduler_choices(pipeline), value=defaults.scheduler, label="Scheduler"),
                "guidance": gr.Radio(
                    guidance_labels(pipeline, defaults.num_inference_steps, defaults.guidance_scale),
                    value=defaults.guidance,
                    label="Guidance mode", interactive=len(guidance_modes) > 1,
                    info=GUIDANCE_NOTE if len(guidance_modes) > 1 else (
                        "this model embeds its guidance scale" if guidance_modes == ["distilled"]
                        else "this model has no distilled or fast adapter"))}
        with gr.Row():
            found.update({
                "mask_fit": gr.Radio(list(settings_module.MASK_FITS), value=defaults.mask_fit, label="Mask fit",
                                     info="tight: the object, and the old background around it, inside the mask; "
                                          "whole: repaint the whole mask"),
                "mask_dilation": gr.Slider(0, 32, defaults.mask_dilation, step=1, label="Mask dilation (px)"),
                "mask_feather": gr.Slider(0, 32, defaults.mask_feather, step=1, label="Mask feather (px)")})
        with gr.Accordion("Advanced (research settings)", open=False, elem_id="advanced"), gr.Row():
            found.update({
                "free_steps_ratio": gr.Slider(0, 1, defaults.free_steps_ratio, step=0.05,
                                              label="BCG free-steps ratio", info=ADVANCED_NOTES["free_steps_ratio"]),
                "attention": gr.Radio(list(settings_module.ATTENTION_MODES), value=defaults.attention,
                                      label="Attention (MQD)", info=ADVANCED_NOTES["attention"]),
                "background": gr.Radio(list(settings_module.BACKGROUND_SOURCES), value=defaults.background,
                                       label="Background source", info=ADVANCED_NOTES["background"]),
                "preserve": gr.Radio(list(settings_module.PRESERVE_MODES), value=defaults.preserve,
                                     label="Preserve", info=ADVANCED_NOTES["preserve"]),
                "bcg_mask": gr.Radio(list(settings_module.BCG_MASKS), value=defaults.bcg_mask, label="BCG mask",
                                     info=ADVANCED_NOTES["bcg_mask"]),
                "routing": gr.Radio(list(settings_module.ROUTING_MODES), value=defaults.routing,
                                    label="MQD routing", info=ADVANCED_NOTES["routing"])})
    return found


def _files_panel() -> dict:
    found = {}
    with gr.Accordion("Photo and project files", open=False, elem_id="files"), gr.Row():
        with gr.Column():
            found["photo"] = gr.Image(label="Start from a photo (the prompt describes it)", type="pil",
                                      image_mode=None, sources=["upload", "clipboard"], format="png", height=200,
                                      elem_id="photo")
            found["photo_fit"] = gr.Radio([("crop to the centre", "crop"), ("fit all of it", "fit")],
                                          value=PHOTO_FITS[0], label="A photo of another shape is",
                                          elem_id="photo-fit")
            found["photo_button"] = gr.Button("Start from photo", elem_id="start-photo")
            with gr.Row(visible=False, elem_id="photo-confirm") as photo_confirm:
                found["photo_replace_button"] = gr.Button("Replace the current image", variant="stop",
                                                          elem_id="photo-replace")
                found["photo_keep_button"] = gr.Button("Keep editing", elem_id="photo-keep")
            found["photo_confirm"] = photo_confirm
        with gr.Column():
            found["save_button"] = gr.Button("Save project (.lep)", elem_id="save")
            found["export_format"] = gr.Radio([(EXPORT_LABELS.get(ext, ext), ext) for ext in EXPORT_FORMATS],
                                              value=EXPORT_FORMATS[0], label="Export layers as",
                                              elem_id="export-format")
            found["export_button"] = gr.Button("Export layers", elem_id="export")
            found["download"] = gr.File(label="Download", interactive=False, elem_id="download")
        found["current"] = gr.Image(label="Current image (actual pixels)", type="pil", format="png",
                                    interactive=False, height=200, elem_id="current", elem_classes=["pixelated"])
        found["project_upload"] = gr.File(label="Open project (.lep)", file_types=[".lep"], type="filepath",
                                          elem_id="open-project")
    return found
