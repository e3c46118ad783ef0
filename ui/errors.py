"""Turn what goes wrong in a handler into something a user can read: a message box or a warning toast."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import gradio as gr

from memory import MemoryStateError, ProjectError

log = logging.getLogger(__name__)

FRIENDLY_ERRORS = (ValueError, TypeError, IndexError, KeyError, MemoryStateError, ProjectError, OSError)


def friendly(handler):
    """Turn the errors a user can cause into a gr.Error with the message (never a stack trace),
    and the library's warnings (e.g. a mask covering the whole image) into gr.Warning toasts."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = handler(*args, **kwargs)
            except gr.Error:
                raise
            except FRIENDLY_ERRORS as error:
                raise gr.Error(str(error) or type(error).__name__, title="Could not do that",
                               print_exception=False) from None
            except MemoryError:
                raise gr.Error("out of memory: try fewer steps or a smaller image", print_exception=False) from None
            except RuntimeError as error:
                log.exception("%s failed", handler.__name__)
                message = "out of memory" if "out of memory" in str(error).lower() else "the model failed"
                raise gr.Error(f"{message}: {str(error).splitlines()[0] if str(error) else ''}",
                               print_exception=False) from None
        for warning in caught:
            if warning.category is UserWarning and _is_ours(warning.filename):
                gr.Warning(str(warning.message))
        return result

    return wrapper


def _is_ours(filename: str) -> bool:
    root = Path(__file__).resolve().parent.parent
    try:
        return Path(filename).resolve().is_relative_to(root) and ".venv" not in Path(filename).parts
    except (OSError, ValueError):
        return False


