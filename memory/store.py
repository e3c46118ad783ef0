"""A layer stack on disk: a JSON manifest, one safetensors file and browsable PNGs, written atomically.

A project is either a directory or a single `.lep` file (a zip of the same members at its root):

    project.json          manifest: format, version, meta, tensor table (key -> dtype, shape), one entry per layer
    tensors.safetensors   every tensor: prompt embeddings, soft masks (float32), stacked trajectories, extra tensors
    layer_000.png         the composite image after layer 0 (RGB); the source of truth for `LayerRecord.image`
    layer_000_mask.png    the user mask of layer 0 (8-bit grey, 0/255); the source of truth for `user_mask`
    ...

Only the current layer stack is stored, not the undo history. This module writes projects; memory/loader.py reads
them (through memory/members.py, which never unpickles, writes, or reads outside the project).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from memory.files import atomic_directory, atomic_file, json_copy, png_bytes
from memory.members import ARCHIVE_SUFFIX, MAX_PROJECT_BYTES
from memory.record import LayerRecord
from memory.stack import check_layer_stack

FORMAT_NAME = "layered-edit-project"
FORMAT_VERSION = 1
MANIFEST = "project.json"
TENSORS = "tensors.safetensors"
ARCHIVE_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # of every zip member: the same project always gives the same bytes


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
        members[image_name] = png_bytes(record.image)
        members[mask_name] = png_bytes(record.user_mask)
        entries.append(_layer_entry(index, record, table, image_name, mask_name))
    members[TENSORS] = safetensors.torch.save(table.tensors)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "meta": json_copy("meta", meta),
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
        return {key: {"dtype": dtype_name(t.dtype), "shape": list(t.shape)} for key, t in self.tensors.items()}


def _owns_its_storage(tensor: torch.Tensor) -> bool:
    return (
        tensor.is_contiguous()
        and tensor.storage_offset() == 0
        and tensor.untyped_storage().nbytes() == tensor.nelement() * tensor.element_size()
    )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _write_archive(path: Path, members: Mapping[str, bytes]) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a directory; a {ARCHIVE_SUFFIX} project is a single file.")
    with atomic_file(path) as file:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in members.items():
                archive.writestr(zipfile.ZipInfo(name, date_time=ARCHIVE_DATE_TIME), data)


def _write_directory(path: Path, members: Mapping[str, bytes]) -> None:
    _check_replaceable(path)
    with atomic_directory(path) as staging:
        for name, data in members.items():
            (staging / name).write_bytes(data)


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
