"""Loading a project (see memory/store.py for its layout): the manifest, the tensors and the layers, each checked.

Loading never unpickles (JSON, safetensors and PNG only) and never writes anything; reading the members themselves
is memory/members.py's job.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from PIL import Image
from safetensors import SafetensorError

from memory.members import ARCHIVE_SUFFIX, ArchiveMembers, DirectoryMembers, Members, ProjectError
from memory.record import LayerRecord
from memory.stack import MemoryStateError, check_layer_stack
from memory.store import FORMAT_NAME, FORMAT_VERSION, MANIFEST, TENSORS, dtype_name


def load_project(path: str | os.PathLike[str]) -> tuple[list[LayerRecord], dict[str, Any]]:
    """Read the project at `path` (a directory, or a file ending in `.lep`): its layers, bottom first, and its meta.

    Raises FileNotFoundError if nothing is at `path`, ProjectError if what is there is not a valid project.
    Tensors come back with the exact dtype and values saved; images and user masks bit-exactly (PNG is lossless).
    """
    path = Path(path)
    if path.name.endswith(ARCHIVE_SUFFIX):
        members: Members = ArchiveMembers(path)
    else:
        members = DirectoryMembers(path)
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


# --- manifest ---------------------------------------------------------------------------------------------------------


def _read_manifest(members: Members) -> dict[str, Any]:
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


def _read_tensors(members: Members, specs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
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
        if dtype_name(found.dtype) != dtype or list(found.shape) != shape:
            raise ProjectError(
                f"{where}: tensor {key!r} is {dtype_name(found.dtype)} {list(found.shape)}, "
                f"but the manifest says {dtype} {shape}."
            )
    return {key: tensors[key] for key in specs}


def _tensor(tensors: Mapping[str, torch.Tensor], key: Any, where: str) -> torch.Tensor:
    if not isinstance(key, str) or key not in tensors:
        raise ProjectError(f"{where}: tensor {key!r} is not in the manifest's tensor table.")
    return tensors[key]


# --- layers -----------------------------------------------------------------------------------------------------------


def _decode_layer(
    members: Members, tensors: Mapping[str, torch.Tensor], entry: Any, where: str
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


def _decode_png(members: Members, name: str, mode: str, size: tuple[int, int]) -> np.ndarray:
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
