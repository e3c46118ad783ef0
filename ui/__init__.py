"""User interfaces: the `layered-edit` command (cli.py) and the Gradio web app (app.py, imported lazily).

The web app's parts: layout.py (components), events.py (wiring), handlers.py (what events do), runs.py (a model
call with its live preview and Cancel), and pure helpers in controls.py (control values), canvas.py (canvas <->
image, the scribble's area, outlines) and prompts.py (token count, unknown words)."""
