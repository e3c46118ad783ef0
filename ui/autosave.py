"""Autosave for the web app: each browser session's project, rewritten after every change.

A killed server loses at most the edit in progress. One folder holds, per session, `<id>.lep` (the project,
written by Session.save: temp file + fsync + rename, so an interrupted save leaves the previous autosave whole)
and `<id>.json` (a small summary for the restore list: when, how many layers, the first prompt). Ids are random
(128 bits from `secrets`). The newest `keep` sessions stay; older ones are deleted after each save.

Nothing here is trusted more than an upload: the restore list shows only names of our own form, the summary is
display text (checked and shortened), and a restore opens the `.lep` with Session.load, the same untrusted-file
path as an uploaded project. This module does not import gradio: the app calls it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from memory import write_atomic

log = logging.getLogger(__name__)

ENV_FOLDER = "LAYERED_EDIT_AUTOSAVE_DIR"  # overrides the default folder; `ui --autosave-dir` overrides both
KEEP = 5  # sessions kept, newest first by save time
STALE_TEMP_S = 3600  # a temp file this old was left by a killed save and is deleted
SUMMARY_MAX_BYTES = 64 * 1024
PROMPT_SHOWN = 60  # characters of the first prompt shown in the restore list

_ID = re.compile(r"[0-9a-f]{32}")
_PROJECT = re.compile(r"([0-9a-f]{32})\.lep")
_SUMMARY = re.compile(r"([0-9a-f]{32})\.json")
_TEMP = re.compile(r"\.[0-9a-f]{32}\.(lep|json)\.new-[0-9a-f]+")  # memory.files' temp names (Session.save's and ours)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def default_folder() -> Path:
    """$LAYERED_EDIT_AUTOSAVE_DIR, else layered-edit/autosave in the user's cache ($XDG_CACHE_HOME or ~/.cache)."""
    configured = os.environ.get(ENV_FOLDER)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "layered-edit" / "autosave"


def new_id() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Entry:
    """One autosaved session, as the restore list shows it. `layers` and `prompt` are None when its summary
    is missing or unreadable (the project itself may still load)."""

    id: str
    path: Path
    saved: float  # POSIX time of the last save
    layers: int | None
    prompt: str | None

    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.saved))
        layers = "? layers" if self.layers is None else f"{self.layers} layer{'s' if self.layers != 1 else ''}"
        prompt = "" if self.prompt is None else f" · '{self.prompt}'"
        return f"{when} · {layers}{prompt}"


class Autosave:
    """The autosave folder: save a session under its id, list the saved ones, find one to restore."""

    def __init__(self, folder: str | os.PathLike[str], keep: int = KEEP):
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a whole number of sessions >= 1, got {keep!r}")
        self.folder = Path(folder).expanduser()
        self.keep = keep
        self._lock = threading.Lock()  # one prune at a time; writes to different ids run in parallel

    def save(self, session_id: str, session) -> Path:
        """Write `session` (an editor.Session with at least one layer) as the autosave `session_id`, then prune.

        Raises whatever the write raises (a full disk, a read-only folder); the previous autosave of this id
        is then left as it was.
        """
        path = self.path(session_id, must_exist=False)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        session.save(path)
        layers = session.layers
        summary = {"format": "layered-edit autosave", "version": 1, "saved": time.time(), "layers": len(layers),
                   "prompt": layers[0].prompt if layers else "", "model": session.model}
        write_atomic(self.folder / f"{session_id}.json", json.dumps(summary).encode("utf-8"))
        self.prune(keep_id=session_id)
        return path

    def entries(self) -> list[Entry]:
        """The autosaved sessions, newest first (only regular files named like ours)."""
        found = []
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        for name in names:
            match = _PROJECT.fullmatch(name)
            if match is None:
                continue
            path = self.folder / name
            try:
                info = path.lstat()
            except OSError:
                continue  # pruned meanwhile
            if not path.is_file() or path.is_symlink():
                continue
            layers, prompt = _read_summary(self.folder / f"{match[1]}.json")
            found.append(Entry(match[1], path, info.st_mtime, layers, prompt))
        return sorted(found, key=lambda entry: entry.saved, reverse=True)

    def path(self, session_id: str, must_exist: bool = True) -> Path:
        """The project file of `session_id`; a malformed id (e.g. from a tampered request) is an error."""
        if not isinstance(session_id, str) or _ID.fullmatch(session_id) is None:
            raise ValueError(f"{session_id!r} is not an autosave id")
        path = self.folder / f"{session_id}.lep"
        if must_exist and not path.is_file():
            raise ValueError(f"that autosave is gone (only the newest {self.keep} sessions are kept); "
                             "reload the page for the current list")
        return path

    def prune(self, keep_id: str | None = None) -> None:
        """Delete all but the newest `keep` sessions (never `keep_id`), summaries without a project, and temp
        files left by killed saves. Files not named like ours are never touched."""
        with self._lock:
            for entry in self.entries()[self.keep:]:
                if entry.id != keep_id:
                    _remove(entry.path)
                    _remove(self.folder / f"{entry.id}.json")
            now = time.time()
            for name in os.listdir(self.folder):
                path = self.folder / name
                summary = _SUMMARY.fullmatch(name)
                if summary and not (self.folder / f"{summary[1]}.lep").exists():
                    _remove(path)
                elif _TEMP.fullmatch(name):
                    try:
                        if now - path.lstat().st_mtime > STALE_TEMP_S:
                            _remove(path)
                    except OSError:
                        pass


def _read_summary(path: Path) -> tuple[int | None, str | None]:
    """(layer count, first prompt shortened for display) from a summary file; (None, None) if unusable."""
    try:
        with open(path, "rb") as file:
            raw = file.read(SUMMARY_MAX_BYTES + 1)
        data = json.loads(raw) if len(raw) <= SUMMARY_MAX_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    layers = data.get("layers")
    layers = layers if isinstance(layers, int) and not isinstance(layers, bool) and layers >= 0 else None
    prompt = data.get("prompt")
    if isinstance(prompt, str):
        prompt = _CONTROL.sub(" ", prompt).strip()
        prompt = prompt if len(prompt) <= PROMPT_SHOWN else prompt[:PROMPT_SHOWN - 1] + "…"
    else:
        prompt = None
    return layers, prompt


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:  # another process's file, a read-only folder: the next prune tries again
        log.warning("could not delete the old autosave %s: %s", path, error)
