"""Small helpers every package may use to write files: atomic (and fsynced) files and folders, PNG bytes, JSON copies.

Atomic here means a reader sees the old content or the new one, never a part: the new content is written in full
under a hidden sibling name on the same filesystem, synced to disk, then renamed onto the target, and the rename
itself is made durable by syncing the folder. Temp names are `.<name>.new-<hex>` (and `.<name>.old-<hex>` for the
backup of a replaced folder), so anyone cleaning a folder can tell them apart from real files.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image


@contextmanager
def atomic_file(path: str | os.PathLike[str], *, parents: bool = False) -> Iterator[IO[bytes]]:
    """A binary file that replaces `path` only once fully written and synced; on any error `path` is untouched.

    With `parents`, missing parent folders are created first."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = sibling(path, "new")
    try:
        with open(temp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_atomic(path: str | os.PathLike[str], data: bytes, *, parents: bool = False) -> None:
    """Replace `path` by `data` all at once (see `atomic_file`)."""
    with atomic_file(path, parents=parents) as file:
        file.write(data)


@contextmanager
def atomic_directory(path: str | os.PathLike[str], *, parents: bool = False) -> Iterator[Path]:
    """A fresh staging folder to fill; once the block ends without error, everything in it is synced and the
    folder replaces `path` (see `replace_directory`). On any error the staging folder is deleted and `path` is
    left as it was. The caller decides whether `path` may be replaced at all. With `parents`, missing parent
    folders are created first."""
    path = Path(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(path, "new")
    staging.mkdir()
    try:
        yield staging
        _sync_tree(staging)
        replace_directory(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(staging: Path, path: Path) -> None:
    """Rename the complete folder `staging` onto `path`, keeping the old `path` at a backup name until the new one
    is in place. At every instant `path` holds the old or the new content, or (only between the two renames) it is
    absent and the old content sits at `.<name>.old-<hex>`. Only a failure of the final folder sync, after the swap,
    leaves the new folder in place and the backup behind."""
    if not path.exists():
        os.rename(staging, path)
        fsync_directory(path.parent)
        return
    backup = sibling(path, "old")
    os.rename(path, backup)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(backup, path)
        raise
    fsync_directory(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


def sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to `path`: same filesystem, so renames are atomic."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


def fsync_directory(path: Path) -> None:
    """Make renames inside `path` durable (POSIX only; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_tree(root: Path) -> None:
    """Sync every file and folder below `root` (deepest first), so a later rename publishes durable content."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            descriptor = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        fsync_directory(Path(folder))


def png_bytes(image: Image.Image | np.ndarray) -> bytes:
    """Lossless PNG of a PIL image or a uint8 array (HxW grey, HxWx3 RGB, HxWx4 RGBA)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.ascontiguousarray(image))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def json_copy(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON-serialisable mapping, in exactly the form a save/load round trip gives
    (tuples become lists, keys strings). `name` is used in the error for anything else, NaN and infinity too."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be JSON-serialisable (no NaN or infinity): {error}") from None
