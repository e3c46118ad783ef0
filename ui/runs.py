"""One model call at a time per browser session, with a live preview and a Cancel (no gradio here).

`run_with_preview` runs a Session call in a worker thread and hands its caller, every few steps, the image
forming (the latents decoded, cheap next to a UNet step), so the app can show it on the canvas. The call
receives a diffusers `callback_on_step_end`; Cancel makes that callback raise `Cancelled` at the next step.
Session guarantees that a call which raises leaves the session exactly as it was (and the attention
processors restored), so a cancelled edit commits nothing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

PREVIEW_EVERY = 4  # steps between two previews: the image changes little in fewer


class Cancelled(Exception):
    """The user pressed Cancel; raised inside the pipeline's step callback."""

    def __init__(self, step: int):
        super().__init__(f"cancelled at step {step}")
        self.step = step


@dataclass(frozen=True)
class Preview:
    """The image forming after `step` of `total` steps (uint8 HxWx3)."""

    image: np.ndarray
    step: int
    total: int


class Runs:
    """Which browser sessions have a model call running, and their Cancel flags."""

    def __init__(self):
        self._cancel: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key) -> threading.Event:
        """Register a run for `key` (the browser session); one at a time per key."""
        with self._lock:
            if id(key) in self._cancel:
                raise ValueError("an edit is already running in this tab: wait for it or press Cancel")
            flag = self._cancel[id(key)] = threading.Event()
        return flag

    def finish(self, key) -> None:
        with self._lock:
            self._cancel.pop(id(key), None)

    def cancel(self, key) -> bool:
        """Ask the run of `key` to stop at its next step; False when nothing runs."""
        with self._lock:
            flag = self._cancel.get(id(key))
        if flag is None:
            return False
        flag.set()
        return True


def run_with_preview(call: Callable[[Callable], object], decode: Callable[[object], np.ndarray], total: int,
                     cancel: threading.Event, every: int = PREVIEW_EVERY) -> Iterator[Preview]:
    """Run `call(callback_on_step_end)` in a worker thread, yielding a Preview every `every` steps.

    The generator's return value (StopIteration.value) is the call's result; the call's exception is raised
    from it. Only the newest preview waits to be taken (a slow browser skips some). If the generator is closed
    early (the tab went away), the call is cancelled and awaited.
    """
    news: queue.Queue = queue.Queue()

    def callback(pipeline, step, timestep, tensors):
        if cancel.is_set():
            raise Cancelled(step)
        if "latents" in tensors and (step + 1) % every == 0 and step + 1 < total:
            news.put(("preview", Preview(decode(tensors["latents"]), step + 1, total)))
        return tensors

    def work():
        try:
            news.put(("done", call(callback)))
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread, raised there
            news.put(("error", error))

    worker = threading.Thread(target=work, name="layered-edit-run", daemon=True)
    worker.start()
    kind = "preview"
    try:
        while True:
            kind, value = news.get()
            while kind == "preview" and not news.empty():  # take the newest
                kind, value = news.get()
            if kind == "preview":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        if kind == "preview":  # closed before the call ended: stop it (the flag is the tab's: only then)
            cancel.set()
        worker.join()
