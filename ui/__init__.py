"""User interfaces: the `layered-edit` command (cli.py) and the Gradio web app (app.py, imported lazily).

The web app's parts: layout.py (components), events.py (wiring), handlers.py (what events do), and pure helpers
in controls.py (control values), canvas.py (canvas <-> image) and export.py (the layers zip)."""
