"""The two containers of a project on disk, a directory or a single `.lep` zip, and safe reading of their members.

Reading never unpickles, never writes, and never reads outside the project: member names must be plain file
names, symlinks are refused, zip members are screened for bomb-like sizes, and the total size read is capped.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

ARCHIVE_SUFFIX = ".lep"

# A project is read whole into memory. 2 GiB holds dozens of SD 512 px layers at 50 steps (1.6 MiB of trajectory
# each) and bounds what a hostile or corrupt project can make us allocate. Saving refuses to exceed it too, so every
# project we write can be loaded again.
MAX_PROJECT_BYTES = 2 * 1024**3

# Real members barely compress (PNG is already compressed, fp16 latents are noise, we write ZIP_STORED), while
# a deflate bomb expands about 1000x. A re-zipped project stays far below this ratio.
MAX_COMPRESSION_RATIO = 100

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


class ProjectError(ValueError):
    """A project on disk that cannot be loaded; the message names the file and the problem."""


class Members(Protocol):
    """Read access to the members of a project, by plain file name."""

    source: str

    def read(self, name: str) -> bytes: ...

    def __enter__(self) -> Members: ...

    def __exit__(self, *exc_info: object) -> None: ...


class _ReadBudget:
    """Bounds the bytes one load may read, so a hostile project cannot exhaust memory."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._left = MAX_PROJECT_BYTES

    def take(self, size: int, name: str) -> None:
        if size > self._left:
            raise ProjectError(
                f"{self._source}: reading {name} ({size} bytes) would exceed the "
                f"{MAX_PROJECT_BYTES}-byte project limit."
            )
        self._left -= size


class DirectoryMembers:
    """Members of a directory project, each a regular file directly inside it (symlinks refused)."""

    def __init__(self, root: Path) -> None:
        if not root.exists():
            raise FileNotFoundError(f"No project at {root}.{_backup_hint(root)}")
        if not root.is_dir():
            raise ProjectError(f"{root} is not a directory; a single-file project must end in {ARCHIVE_SUFFIX}.")
        self.source = str(root)
        self._root = root
        self._budget = _ReadBudget(self.source)

    def read(self, name: str) -> bytes:
        _check_member_name(name, self.source)
        path = self._root / name
        symlink_error = f"{path} is a symlink; project members must be regular files inside the project."
        if path.is_symlink():
            raise ProjectError(symlink_error)
        try:  # O_NOFOLLOW closes the race of a member swapped for a symlink after the check above
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ProjectError(f"{self.source}: missing member {name}.") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise ProjectError(symlink_error) from None
            raise ProjectError(f"{path}: cannot be read as a project member ({error}).") from None
        with os.fdopen(descriptor, "rb") as file:
            status = os.fstat(file.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise ProjectError(f"{path} is not a regular file.")
            self._budget.take(status.st_size, name)
            data = file.read(status.st_size + 1)
        if len(data) != status.st_size:
            raise ProjectError(f"{path} changed size while being read.")
        return data

    def __enter__(self) -> DirectoryMembers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class ArchiveMembers:
    """Members of a `.lep` zip, read into memory with bounded sizes; nothing is extracted to disk."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"No project at {path}.")
        if not path.is_file():
            raise ProjectError(f"{path} is not a file; a {ARCHIVE_SUFFIX} project is a single zip file.")
        self.source = str(path)
        try:
            self._archive = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ProjectError(
                f"{path} is not a valid {ARCHIVE_SUFFIX} archive (truncated or corrupt): {error}"
            ) from None
        try:
            self._infos = self._checked_infos()
        except BaseException:
            self._archive.close()
            raise
        self._budget = _ReadBudget(self.source)

    def _checked_infos(self) -> dict[str, zipfile.ZipInfo]:
        """Screen every member before reading any: unsafe names, symlinks, duplicates, and bomb-like sizes."""
        infos: dict[str, zipfile.ZipInfo] = {}
        for info in self._archive.infolist():
            name = info.filename
            _check_not_escaping(name, self.source)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ProjectError(f"{self.source}: member {name} is a symlink; project members must be regular files.")
            if name in infos:
                raise ProjectError(f"{self.source}: member {name} appears twice.")
            compressed = info.compress_type != zipfile.ZIP_STORED
            if compressed and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
                raise ProjectError(
                    f"{self.source}: member {name} expands {info.compress_size} -> {info.file_size} bytes, over the "
                    f"{MAX_COMPRESSION_RATIO}x ratio allowed (a zip bomb?)."
                )
            infos[name] = info
        total = sum(info.file_size for info in infos.values())
        if total > MAX_PROJECT_BYTES:
            raise ProjectError(
                f"{self.source}: members total {total} bytes uncompressed, over the {MAX_PROJECT_BYTES}-byte limit."
            )
        return infos

    def read(self, name: str) -> bytes:
        _check_member_name(name, self.source)
        info = self._infos.get(name)
        if info is None:
            raise ProjectError(f"{self.source}: missing member {name}.")
        self._budget.take(info.file_size, name)
        try:
            with self._archive.open(info) as member:
                data = member.read(info.file_size)  # zipfile also stops at the declared size and checks the CRC
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as error:
            raise ProjectError(f"{self.source}: member {name} is corrupt or unreadable: {error}") from None
        if len(data) != info.file_size:
            raise ProjectError(f"{self.source}: member {name} is truncated ({len(data)} of {info.file_size} bytes).")
        return data

    def __enter__(self) -> ArchiveMembers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._archive.close()


def _backup_hint(root: Path) -> str:
    """Point at backups an interrupted directory save may have left (see save_project's guarantee)."""
    if not root.parent.is_dir():
        return ""
    backups = sorted(root.parent.glob(f".{root.name}.old-*"))
    if not backups:
        return ""
    return f" A save was interrupted; the previous project is at {backups[-1]}: rename it to {root.name}."


def _check_not_escaping(name: str, source: str) -> None:
    """Reject member names that could point outside the project: absolute paths and `..`."""
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.is_absolute() or windows.drive or name.startswith("\\"):
        raise ProjectError(f"{source}: member name {name!r} is an absolute path.")
    if ".." in name:
        raise ProjectError(f"{source}: member name {name!r} contains '..'.")


def _check_member_name(name: Any, source: str) -> None:
    """A member we read must be a plain file name at the project root."""
    if not isinstance(name, str) or not name:
        raise ProjectError(f"{source}: a member name must be a non-empty string, got {name!r}.")
    _check_not_escaping(name, source)
    if not _PLAIN_NAME.fullmatch(name):
        raise ProjectError(f"{source}: member name {name!r} must be a plain file name in the project root.")
