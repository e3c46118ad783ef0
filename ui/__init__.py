"""User interfaces: the `layered-edit` command (cli.py) and the Gradio web app (app.py, imported lazily)."""
