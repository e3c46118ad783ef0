"""Fixtures shared by the test modules: the tiny random model, and the web app served in-process.

Helpers that are plain functions live in helper modules (tiny_models.py, ui_client.py), not here.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from tiny_models import save_tiny_pipeline


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(demo, **options) -> str:
    """Serve `demo` on a free localhost port without blocking; returns its URL."""
    from ui import app

    _, url, _ = app.launch_app(demo, host="127.0.0.1", port=_free_port(), prevent_thread_lock=True, quiet=True,
                               **options)
    return url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved folder of tiny random SD components (text-to-image UNet), shared read-only by every module."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def ui_model(tiny_model_dir) -> str:
    """The model `ui_server` serves; a module may override this fixture."""
    return str(tiny_model_dir)


@pytest.fixture(scope="module")
def ui_server(ui_model):
    """(demo, url): the web app on `ui_model`, without autosave, served for the module's tests."""
    from editor import Session
    from ui import app

    session = Session.from_pretrained(ui_model, device="cpu")
    demo = app.build_app(session.pipeline, model=session.model)
    url = _serve(demo)
    yield demo, url
    demo.close()


@pytest.fixture
def launch_app():
    """launch(pipeline, model, autosave, **launch_options) -> (demo, url): an app served until the test ends."""
    from ui import app

    demos = []

    def launch(pipeline, model, autosave, **options):
        demo = app.build_app(pipeline, model=model, autosave=autosave)
        demos.append(demo)
        return demo, _serve(demo, **options)

    yield launch
    for demo in demos:
        demo.close()
