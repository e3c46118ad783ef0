"""The web UI: one Gradio app over editor.Session (`layered-edit ui`).

The app is put together from its parts, each one idea:
- ui/layout.py: `create_components`, the layout (no events);
- ui/events.py: `wire_events`, which event of which component calls which handler;
- ui/handlers.py: `Handlers`, plain functions of component values that call editor.Session (no diffusion code);
- ui/controls.py, ui/canvas.py, ui/prompts.py: pure helpers for control values, the canvas and the prompt box;
- ui/runs.py: a model call in a worker thread, with the live preview and Cancel (exports: editor/export.py).

Every change to a browser session is autosaved (ui/autosave.py) when the app has an autosave folder; on
page load the app offers to restore one of the newest autosaves. A closed tab's Session is freed at once
(its autosave stays on disk).
"""

from __future__ import annotations

import logging

import gradio as gr

from editor import Session
from ui.autosave import Autosave
from ui.events import wire_events
from ui.handlers import Handlers
from ui.layout import create_components

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
MAX_UPLOAD = "200mb"  # photos and .lep projects; an SD project with many layers is a few MB
MAX_QUEUE = 16  # events waiting for a worker, all tabs together; beyond it a click is refused ("queue is full")

CSS = """
#canvas canvas, .pixelated img { image-rendering: pixelated; }
#canvas-area { position: relative; }
#preview { position: absolute; inset: 0; z-index: 50; background: var(--block-background-fill); }
#preview img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }
#status { min-height: 2.2em; }
#prompt-check { min-height: 1.2em; font-size: 0.9em; }
"""
# Ctrl+Z / Ctrl+Shift+Z (Cmd on a Mac) press Undo / Redo, unless the focus is in a text box, where they edit
# the text. Right after painting (the last click was on the canvas) they undo / redo brush strokes with the canvas's
# own buttons, and stop when none are left rather than reach for a layer; otherwise they press the app's buttons,
# which undo whole layers. A disabled button does nothing.
SHORTCUTS_JS = """() => {
  let painting = false;
  document.addEventListener('pointerdown', (event) => {
    painting = !!(event.target.closest && event.target.closest('#canvas canvas'));
  }, true);
  document.addEventListener('keydown', (event) => {
    if (!(event.ctrlKey || event.metaKey) || event.altKey || event.key.toLowerCase() !== 'z') return;
    const target = event.target;
    const typing = 'input, textarea, select, [contenteditable=""], [contenteditable="true"]';
    if (target.closest && target.closest(typing)) return;
    const label = event.shiftKey ? 'Redo' : 'Undo';
    const stroke = document.querySelector(`#canvas button[aria-label="${label}"]`);
    const button = painting && stroke ? stroke : document.querySelector(`#${label.toLowerCase()}`);
    if (button && !button.disabled) { event.preventDefault(); button.click(); }
  });
}"""


def build_app(pipeline, model: str | None = None, autosave: Autosave | None = None) -> gr.Blocks:
    """The Gradio app on a loaded pipeline (shared by all browser sessions). With `autosave`, every change
    of a browser session is saved there and page loads offer to restore the newest autosaves."""
    handlers = Handlers(pipeline, model, autosave=autosave)
    with gr.Blocks(title="layered-edit", delete_cache=(3600, 3600), analytics_enabled=False) as demo:
        components = create_components(pipeline, session_closed=handlers.session_closed)
        wire_events(demo, components, handlers)
    demo.handlers = handlers  # for tests and embedding
    demo.components = components
    return demo


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
        prevent_thread_lock=prevent_thread_lock, quiet=quiet, ssr_mode=False, theme=theme, css=CSS, js=SHORTCUTS_JS,
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
