"""Turn what goes wrong in a handler into something a user can read: a message, never a stack trace.

Errors become gr.Error (a toast in the browser, an error for HTTP clients); the wiring puts gradio's own
error marks on a hidden component, so a failed event leaves every panel as it was. The library's warnings
(e.g. a mask covering the whole image) become gr.Warning toasts.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from pathlib import Path

import gradio as gr

from editor import NothingDrawnWarning
from memory import MemoryStateError, ProjectError

log = logging.getLogger(__name__)

FRIENDLY_ERRORS = (ValueError, TypeError, IndexError, KeyError, MemoryStateError, ProjectError, OSError)


@contextlib.contextmanager
def user_errors(name: str):
    """Errors a user can cause as gr.Error with the message; the model failing as a short gr.Error."""
    try:
        yield
    except gr.Error:
        raise
    except FRIENDLY_ERRORS as error:
        raise gr.Error(str(error) or type(error).__name__, title="Could not do that", print_exception=False) from None
    except MemoryError:
        raise gr.Error("out of memory: try fewer steps or a smaller image", print_exception=False) from None
    except RuntimeError as error:
        log.exception("%s failed", name)
        message = "out of memory" if "out of memory" in str(error).lower() else "the model failed"
        raise gr.Error(f"{message}: {str(error).splitlines()[0] if str(error) else ''}",
                       print_exception=False) from None


def friendly(handler):
    """`handler` (a function or a generator function) with its errors made friendly (`user_errors`). A plain
    function's warnings become toasts here; a generator's model calls report theirs (ui/handlers.py)."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            with user_errors(handler.__name__):
                yield from handler(*args, **kwargs)

        return streaming

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with user_errors(handler.__name__):
                result = handler(*args, **kwargs)
        show_warnings(caught)
        return result

    return wrapper


def show_warnings(caught) -> None:
    """Our library's UserWarnings as toasts; "nothing drawn" is left to the handler, which explains it."""
    for warning in caught:
        if (issubclass(warning.category, UserWarning) and not issubclass(warning.category, NothingDrawnWarning)
                and _is_ours(warning.filename)):
            gr.Warning(str(warning.message))


def _is_ours(filename: str) -> bool:
    root = Path(__file__).resolve().parent.parent
    try:
        return Path(filename).resolve().is_relative_to(root) and ".venv" not in Path(filename).parts
    except (OSError, ValueError):
        return False
