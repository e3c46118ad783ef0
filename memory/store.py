"""A layer stack on disk: a JSON manifest, one safetensors file and browsable PNGs, written atomically.

A project is either a directory or a single `.lep` file (a zip of the same members at its root):

    project.json          manifest: format, version, meta, tensor table (key -> dtype, shape), one entry per layer
    tensors.safetensors   every tensor: prompt embeddings, soft masks (float32), stacked trajectories, extra tensors
    layer_000.png         the composite image after layer 0 (RGB); the source of truth for `LayerRecord.image`
    layer_000_mask.png    the user mask of layer 0 (8-bit grey, 0/255); the source of truth for `user_mask`
    ...

Only the current layer stack is stored, not the undo history. Loading never unpickles (JSON, safetensors and PNG
only), never writes anything, and never reads outside the project: member names must be plain file names, symlinks
are refused, and the total size read is capped.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Protocol

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from safetensors import SafetensorError

from memory.record import LayerRecord
from memory.stack import MemoryStateError, check_layer_stack

FORMAT_NAME = "layered-edit-project"
FORMAT_VERSION = 1
ARCHIVE_SUFFIX = ".lep"
MANIFEST = "project.json"
TENSORS = "tensors.safetensors"

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


# ======================================================================================================================
# Saving
# ======================================================================================================================


def save_project(path: str | os.PathLike[str], layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> None:
    """Write `layers` and `meta` as a project at `path`: a `.lep` file if the name ends so, else a directory.

    Atomicity guarantee:
    - `.lep`: the archive is written to a hidden temp file in the same directory, fsynced, then `os.replace`d onto
      `path`. At every instant `path` is the complete old project or the complete new one.
    - directory: the new project is written in full to a hidden sibling `.<name>.new-<hex>` and fsynced. If `path`
      exists it is renamed to `.<name>.old-<hex>`, the new directory is renamed to `path`, and the old one deleted.
      At every instant either `path` holds the complete old or new project, or - only between the two renames -
      `path` is absent and the complete old project sits at `.<name>.old-<hex>` (a crash there leaves it for the
      user to rename back; `load_project` names it in its error).
    If writing raises, the previous project at `path` is left untouched and the temp files are removed (only a
    failure of the final directory fsync, after the swap, leaves the new project in place and its backup behind).
    An existing directory at `path` is replaced only if it is empty or holds a `project.json`.
    """
    path = Path(path)
    members = _encode_project(layers, meta)
    if path.name.endswith(ARCHIVE_SUFFIX):
        _write_archive(path, members)
    else:
        _write_directory(path, members)


def _encode_project(layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> dict[str, bytes]:
    """Every member of the project as bytes, so the directory and archive writers share one encoder."""
    layers = tuple(layers)
    check_layer_stack(layers)
    table = _TensorTable()
    members: dict[str, bytes] = {}
    entries = []
    for index, record in enumerate(layers):
        image_name, mask_name = f"layer_{index:03d}.png", f"layer_{index:03d}_mask.png"
        members[image_name] = _png_bytes(record.image)
        members[mask_name] = _png_bytes(record.user_mask)
        entries.append(_layer_entry(index, record, table, image_name, mask_name))
    members[TENSORS] = safetensors.torch.save(table.tensors)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "meta": _json_copy("meta", meta),
        "tensors": table.specs(),
        "layers": entries,
    }
    members[MANIFEST] = json.dumps(manifest, indent=2, allow_nan=False).encode("utf-8")
    total = sum(len(data) for data in members.values())
    if total > MAX_PROJECT_BYTES:
        raise ValueError(f"The project would take {total} bytes, over the {MAX_PROJECT_BYTES} bytes a load accepts.")
    return members


def _layer_entry(
    index: int, record: LayerRecord, table: _TensorTable, image_name: str, mask_name: str
) -> dict[str, Any]:
    prefix = f"layer_{index:03d}"
    negative = record.negative_prompt_embeds
    negative_key = None if negative is None else table.add(f"{prefix}.negative_prompt_embeds", negative)
    height, width = record.image.shape[:2]
    return {
        "kind": record.kind,
        "visible": record.visible,
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "seed": record.seed,
        "schedule": {"scheduler": record.schedule[0], "timesteps": list(record.schedule[1])},
        "settings": dict(record.settings),
        "info": dict(record.info),
        "height": height,
        "width": width,
        "image": image_name,
        "user_mask": mask_name,
        "tensors": {
            "prompt_embeds": table.add(f"{prefix}.prompt_embeds", record.prompt_embeds),
            "negative_prompt_embeds": negative_key,
            "mask": table.add(f"{prefix}.mask", torch.from_numpy(record.mask.copy())),
            "trajectory": table.add(f"{prefix}.trajectory", torch.stack(record.trajectory)),
            "extra": {name: table.add(f"{prefix}.extra.{name}", t) for name, t in record.extra_tensors.items()},
        },
    }


class _TensorTable:
    """The tensors of one safetensors file. A tensor held by several layers is stored once, under one key.

    safetensors refuses tensors that share memory, and storing a shared tensor once also restores the sharing
    on load. Views that do not own their whole storage are copied so each stored tensor stands alone.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._key_of_view: dict[tuple[Any, ...], str] = {}
        self._storages: set[int] = set()

    def add(self, key: str, tensor: torch.Tensor) -> str:
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        if view in self._key_of_view:
            return self._key_of_view[view]
        if storage in self._storages or not _owns_its_storage(tensor):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        self._storages.add(tensor.untyped_storage().data_ptr())
        self._key_of_view[view] = key
        self.tensors[key] = tensor
        return key

    def specs(self) -> dict[str, dict[str, Any]]:
        return {key: {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)} for key, t in self.tensors.items()}


def _owns_its_storage(tensor: torch.Tensor) -> bool:
    return (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nelement() * tensor.element_size()
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _png_bytes(array: np.ndarray) -> bytes:
    """Lossless PNG of an RGB image (HxWx3) or a grey mask (HxW), both uint8."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _json_copy(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be JSON-serialisable (no NaN or infinity): {error}") from None


ARCHIVE_DATE_TIME = (1980, 1, 1, 0, 0, 0)


def _write_archive(path: Path, members: Mapping[str, bytes]) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory; a {ARCHIVE_SUFFIX} project is a single file.")
    with atomic_file(path) as file:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                # a fixed timestamp: the same project always gives the same bytes
                archive.writestr(zipfile.ZipInfo(name, date_time=ARCHIVE_DATE_TIME), data)


@contextmanager
def atomic_file(path: Path):
    """A binary file that replaces `path` only once fully written and synced; on any error `path` is untouched."""
    temp = _sibling(path, "new")
    try:
        with open(temp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_file_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` by `data` all at once (readers see the old file or the new one, never a part)."""
    with atomic_file(Path(path)) as file:
        file.write(data)


def _write_directory(path: Path, members: Mapping[str, bytes]) -> None:
    _check_replaceable(path)
    staging = _sibling(path, "new")
    staging.mkdir()
    try:
        for name, data in members.items():
            _write_synced(staging / name, data)
        _fsync_directory(staging)
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_replaceable(path: Path) -> None:
    """Refuse to replace anything but a project directory: a wrong path must not delete a user's folder."""
    if path.is_symlink():
        raise ValueError(f"{path} is a symlink; save the project to the directory it points to instead.")
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory; use a name ending in {ARCHIVE_SUFFIX} for a file.")
    if any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise ValueError(f"Refusing to replace {path}: it is not empty and holds no {MANIFEST}.")


def _swap_in(staging: Path, path: Path) -> None:
    """Rename the complete new project onto `path`, keeping the old one at a backup name until the new is in place."""
    if not path.exists():
        os.rename(staging, path)
        _fsync_directory(path.parent)
        return
    backup = _sibling(path, "old")
    os.rename(path, backup)
    try:
        os.rename(staging, path)
    except BaseException:
        os.rename(backup, path)
        raise
    _fsync_directory(path.parent)
    shutil.rmtree(backup, ignore_errors=True)


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to `path`: same filesystem, so renames are atomic."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _fsync_directory(path: Path) -> None:
    """Make renames inside `path` durable (POSIX only; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# ======================================================================================================================
# Loading
# ======================================================================================================================


def load_project(path: str | os.PathLike[str]) -> tuple[list[LayerRecord], dict[str, Any]]:
    """Read the project at `path` (a directory, or a file ending in `.lep`): its layers, bottom first, and its meta.

    Raises FileNotFoundError if nothing is at `path`, ProjectError if what is there is not a valid project.
    Tensors come back with the exact dtype and values saved; images and user masks bit-exactly (PNG is lossless).
    """
    path = Path(path)
    if path.name.endswith(ARCHIVE_SUFFIX):
        members: _Members = _ArchiveMembers(path)
    else:
        members = _DirectoryMembers(path)
    with members:
        manifest = _read_manifest(members)
        tensors = _read_tensors(members, manifest["tensors"])
        layers = [
            _decode_layer(members, tensors, entry, f"{members.source}/{MANIFEST}, layer {index}")
            for index, entry in enumerate(manifest["layers"])
        ]
    try:
        check_layer_stack(layers)
    except MemoryStateError as error:
        raise ProjectError(f"{members.source}: {error}") from None
    return layers, manifest["meta"]


class _Members(Protocol):
    """Read access to the members of a project, by plain file name."""

    source: str

    def read(self, name: str) -> bytes: ...

    def __enter__(self) -> _Members: ...

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


class _DirectoryMembers:
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

    def __enter__(self) -> _DirectoryMembers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


class _ArchiveMembers:
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

    def __enter__(self) -> _ArchiveMembers:
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


# --- manifest ---------------------------------------------------------------------------------------------------------


def _read_manifest(members: _Members) -> dict[str, Any]:
    where = f"{members.source}/{MANIFEST}"
    try:
        manifest = json.loads(members.read(MANIFEST))
    except (ValueError, RecursionError) as error:
        if isinstance(error, ProjectError):
            raise
        raise ProjectError(f"{where} is not valid JSON: {error}") from None
    if not isinstance(manifest, dict):
        raise ProjectError(f"{where} must hold a JSON object, got {type(manifest).__name__}.")
    if manifest.get("format") != FORMAT_NAME:
        raise ProjectError(f"{where}: not a layered-edit project (format is {manifest.get('format')!r}).")
    version = _field(manifest, "version", int, where)
    if version > FORMAT_VERSION:
        raise ProjectError(
            f"{where}: written by a newer layered-edit (format version {version}; this one reads up to "
            f"{FORMAT_VERSION}). Update layered-edit to open it."
        )
    if version < 1:
        raise ProjectError(f"{where}: invalid format version {version}.")
    _field(manifest, "meta", dict, where)
    _field(manifest, "tensors", dict, where)
    _field(manifest, "layers", list, where)
    return manifest


def _field(entry: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """entry[key], checked to be of `kind` (a bool does not pass for an int)."""
    if key not in entry:
        raise ProjectError(f"{where}: missing field {key!r}.")
    value = entry[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise ProjectError(f"{where}: field {key!r} must be {expected}, got {type(value).__name__}.")
    return value


# --- tensors ----------------------------------------------------------------------------------------------------------


def _read_tensors(members: _Members, specs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors file, checked against the manifest's tensor table (every key present, same dtype and shape)."""
    where = f"{members.source}/{TENSORS}"
    try:
        tensors = safetensors.torch.load(members.read(TENSORS))
    except (SafetensorError, ValueError, RuntimeError, TypeError) as error:
        if isinstance(error, ProjectError):
            raise
        raise ProjectError(f"{where} is not a valid safetensors file: {error}") from None
    for key, spec in specs.items():
        spec_where = f"{members.source}/{MANIFEST}, tensor {key!r}"
        if not isinstance(spec, dict):
            raise ProjectError(f"{spec_where} must be an object with dtype and shape.")
        dtype = _field(spec, "dtype", str, spec_where)
        shape = _field(spec, "shape", list, spec_where)
        if key not in tensors:
            raise ProjectError(f"{where}: missing tensor {key!r} listed in the manifest.")
        found = tensors[key]
        if _dtype_name(found.dtype) != dtype or list(found.shape) != shape:
            raise ProjectError(
                f"{where}: tensor {key!r} is {_dtype_name(found.dtype)} {list(found.shape)}, "
                f"but the manifest says {dtype} {shape}."
            )
    return {key: tensors[key] for key in specs}


def _tensor(tensors: Mapping[str, torch.Tensor], key: Any, where: str) -> torch.Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise ProjectError(f"{where}: tensor {key!r} is not in the manifest's tensor table.")
    return tensors[key]


# --- layers -----------------------------------------------------------------------------------------------------------


def _decode_layer(
    members: _Members, tensors: Mapping[str, torch.Tensor], entry: Any, where: str
) -> LayerRecord:
    if not isinstance(entry, dict):
        raise ProjectError(f"{where} must be a JSON object, got {type(entry).__name__}.")
    height, width = _field(entry, "height", int, where), _field(entry, "width", int, where)
    image = _decode_png(members, _field(entry, "image", str, where), "RGB", (width, height))
    user_mask = _decode_png(members, _field(entry, "user_mask", str, where), "L", (width, height))
    schedule = _field(entry, "schedule", dict, where)
    refs = _field(entry, "tensors", dict, where)
    negative_key = _field(refs, "negative_prompt_embeds", (str, type(None)), where)
    extra_keys = _field(refs, "extra", dict, where)
    try:
        return LayerRecord(
            prompt=_field(entry, "prompt", str, where),
            negative_prompt=_field(entry, "negative_prompt", str, where),
            seed=_field(entry, "seed", int, where),
            settings=_field(entry, "settings", dict, where),
            schedule=(_field(schedule, "scheduler", str, where), _field(schedule, "timesteps", list, where)),
            prompt_embeds=_tensor(tensors, refs.get("prompt_embeds"), where),
            negative_prompt_embeds=None if negative_key is None else _tensor(tensors, negative_key, where),
            user_mask=user_mask,
            mask=_soft_mask(_tensor(tensors, refs.get("mask"), where), where),
            trajectory=_trajectory(_tensor(tensors, refs.get("trajectory"), where), where),
            image=image,
            kind=_field(entry, "kind", str, where),
            visible=_field(entry, "visible", bool, where),
            info=_field(entry, "info", dict, where),
            extra_tensors={name: _tensor(tensors, key, where) for name, key in extra_keys.items()},
        )
    except ProjectError:
        raise
    except ValueError as error:
        raise ProjectError(f"{where}: {error}") from None


def _soft_mask(tensor: torch.Tensor, where: str) -> np.ndarray:
    if tensor.dtype != torch.float32 or tensor.ndim != 2:
        raise ProjectError(
            f"{where}: the soft mask must be a float32 HxW tensor, got {tensor.dtype} {list(tensor.shape)}."
        )
    mask = tensor.numpy()
    mask.setflags(write=False)
    return mask


def _trajectory(tensor: torch.Tensor, where: str) -> tuple[torch.Tensor, ...]:
    if tensor.ndim < 1:
        raise ProjectError(f"{where}: the trajectory must be stacked along a step axis, got a scalar tensor.")
    return tuple(tensor.unbind(0))


def _decode_png(members: _Members, name: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """A PNG member as a read-only array, checked for mode and size before its pixels are decoded."""
    data = members.read(name)
    where = f"{members.source}/{name}"
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.mode != mode or image.size != size:
                raise ProjectError(
                    f"{where}: expected a {mode} PNG of {size[0]}x{size[1]}, "
                    f"got {image.mode} {image.size[0]}x{image.size[1]}."
                )
            return np.asarray(image)
    except ProjectError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ProjectError(f"{where} is not a valid PNG: {error}") from None
