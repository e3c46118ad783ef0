"""One layer of an edit session, as an immutable value.

A `LayerRecord` holds everything needed to show, replay or build on a layer: the prompt and its embeddings, the
masks, the latent trajectory the background-consistency guidance (BCG) follows, and the composite image. Records
are never changed in place: an edit makes a new record, so an undo snapshot is just a tuple of the records it held.

Immutability contract: the dataclass is frozen, numpy arrays are made read-only, and `settings`, `info` and
`extra_tensors` are read-only mappings. torch has no read-only flag, so tensors are read-only by convention: the
record takes them as given (no copy, so values stay bit-identical) and nobody may modify them in place afterwards.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from memory.files import json_copy

LAYER_KINDS = ("background", "edit")

Schedule = tuple[str, tuple[int, ...]]


@dataclasses.dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class LayerRecord:
    """One layer: what was asked, what was computed, and the image it produced.

    Fields are keyword-only (there are many, and a swapped mask and image must not go unnoticed).
    Equality is identity (`eq=False`): comparing tensors with `==` is ambiguous, and the undo stack only needs to
    know whether two snapshots hold the same record objects.

    `settings` and `info` are normalised through JSON on construction (tuples become lists, keys become strings),
    so a record compares the same before and after a save/load round trip; NaN and infinity are rejected.
    """

    prompt: str
    negative_prompt: str
    seed: int
    settings: Mapping[str, Any]
    schedule: Schedule
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor | None
    user_mask: np.ndarray
    mask: np.ndarray
    trajectory: tuple[torch.Tensor, ...]
    image: np.ndarray
    kind: str
    visible: bool = True
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra_tensors: Mapping[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_scalars()
        self._set("settings", _frozen_json("settings", self.settings))
        self._set("info", _frozen_json("info", self.info))
        self._set("schedule", normalise_schedule(self.schedule))
        self._set("prompt_embeds", _cpu_tensor("prompt_embeds", self.prompt_embeds))
        if self.negative_prompt_embeds is not None:
            self._set("negative_prompt_embeds", _cpu_tensor("negative_prompt_embeds", self.negative_prompt_embeds))
        self._set("extra_tensors", _frozen_tensor_map(self.extra_tensors))
        self._set("image", _read_only_array("image", self.image))
        self._set("user_mask", _read_only_array("user_mask", self.user_mask))
        self._set("mask", _read_only_array("mask", self.mask))
        self._check_image_and_masks()
        self._set("trajectory", _checked_trajectory(self.trajectory, self.schedule))

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field of the frozen dataclass during construction only."""
        object.__setattr__(self, name, value)

    def _check_scalars(self) -> None:
        for name in ("prompt", "negative_prompt"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r} ({type(self.seed).__name__})")
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"kind must be one of {LAYER_KINDS}, got {self.kind!r}")
        if not isinstance(self.visible, bool):
            raise ValueError(f"visible must be a bool, got {self.visible!r}")

    def _check_image_and_masks(self) -> None:
        image, user_mask, mask = self.image, self.user_mask, self.mask
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be a uint8 HxWx3 array, got {image.dtype} with shape {image.shape}")
        size = image.shape[:2]
        for name, array in (("user_mask", user_mask), ("mask", mask)):
            if array.shape != size:
                raise ValueError(f"{name} must be HxW matching the image {size}, got shape {array.shape}")
        if user_mask.dtype != np.uint8:
            raise ValueError(f"user_mask must be uint8 with values 0/255, got {user_mask.dtype}")
        if not np.isin(user_mask, (0, 255)).all():
            raise ValueError(f"user_mask must hold only 0 and 255, got values {np.unique(user_mask)[:8].tolist()}")
        if self.kind == "background" and not (user_mask == 255).all():
            raise ValueError("a background layer's user_mask must be all 255 (it covers the whole image)")
        if mask.dtype != np.float32:
            raise ValueError(f"mask must be float32 in [0, 1], got {mask.dtype}")
        if not np.isfinite(mask).all():
            raise ValueError("mask must be finite, got NaN or infinity")
        if mask.size and (mask.min() < 0.0 or mask.max() > 1.0):
            raise ValueError(f"mask must lie in [0, 1], got range [{mask.min()}, {mask.max()}]")

    def buffers(self) -> Iterator[torch.Tensor | np.ndarray]:
        """Every tensor and array the record holds, so memory accounting can count shared buffers once."""
        yield self.prompt_embeds
        if self.negative_prompt_embeds is not None:
            yield self.negative_prompt_embeds
        yield from self.trajectory
        yield from self.extra_tensors.values()
        yield self.user_mask
        yield self.mask
        yield self.image

    @property
    def nbytes(self) -> int:
        """Bytes held by the record's tensors and arrays (the benchmark's "memory bytes per layer")."""
        return sum(buffer_nbytes(buffer) for buffer in self.buffers())

    def replace(self, **changes: Any) -> LayerRecord:
        """A new record with some fields changed; this one stays as it is (undo snapshots may hold it)."""
        return dataclasses.replace(self, **changes)

    def __copy__(self) -> LayerRecord:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LayerRecord:
        """An immutable value is its own deep copy (Gradio deep-copies state; copying trajectories would be waste)."""
        return self

    def __repr__(self) -> str:
        height, width = self.image.shape[:2]
        return (
            f"LayerRecord(kind={self.kind!r}, prompt={self.prompt!r}, seed={self.seed}, "
            f"steps={len(self.trajectory)}, image={width}x{height}, visible={self.visible})"
        )


def normalise_schedule(schedule: Sequence[Any]) -> Schedule:
    """(scheduler name, timesteps) as (str, tuple of int); timesteps may be a list, an array or an int tensor."""
    try:
        name, timesteps = schedule
        steps = tuple(operator.index(t) for t in timesteps)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"schedule must be (scheduler name, sequence of integer timesteps), got {schedule!r}: {error}"
        ) from None
    if not isinstance(name, str) or not name:
        raise ValueError(f"schedule's scheduler name must be a non-empty str, got {name!r}")
    return name, steps


def buffer_nbytes(buffer: torch.Tensor | np.ndarray) -> int:
    if isinstance(buffer, torch.Tensor):
        return buffer.element_size() * buffer.nelement()
    return int(buffer.nbytes)


def _frozen_json(name: str, value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of a JSON-serialisable mapping, in exactly the form a save/load round trip gives."""
    return MappingProxyType(json_copy(name, value))


def _cpu_tensor(name: str, value: Any) -> torch.Tensor:
    """The tensor on the CPU, detached only if needed, so an unchanged CPU tensor stays the very same object."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.requires_grad:
        value = value.detach()
    return value.to("cpu")


def _frozen_tensor_map(tensors: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    if not isinstance(tensors, Mapping):
        raise ValueError(f"extra_tensors must be a mapping of str to tensor, got {type(tensors).__name__}")
    for key in tensors:
        if not isinstance(key, str) or not key:
            raise ValueError(f"extra_tensors keys must be non-empty str, got {key!r}")
    return MappingProxyType({key: _cpu_tensor(f"extra_tensors[{key!r}]", t) for key, t in tensors.items()})


def _read_only_array(name: str, value: Any) -> np.ndarray:
    """A read-only array; a writeable one is copied first so the caller's array is neither frozen nor shared."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")
    if not value.flags.writeable:
        return value
    frozen = value.copy()
    frozen.setflags(write=False)
    return frozen


def _checked_trajectory(trajectory: Sequence[torch.Tensor], schedule: Schedule) -> tuple[torch.Tensor, ...]:
    if isinstance(trajectory, torch.Tensor) or not isinstance(trajectory, Sequence):
        raise ValueError(f"trajectory must be a sequence of tensors (one per step), got {type(trajectory).__name__}")
    steps = tuple(_cpu_tensor(f"trajectory[{i}]", t) for i, t in enumerate(trajectory))
    if not steps:
        raise ValueError("trajectory must hold at least one latent (one per scheduler step), got none")
    first = steps[0]
    for i, latent in enumerate(steps):
        if latent.shape != first.shape or latent.dtype != first.dtype:
            raise ValueError(
                f"trajectory tensors must share shape and dtype: step 0 is {tuple(first.shape)} {first.dtype}, "
                f"step {i} is {tuple(latent.shape)} {latent.dtype}"
            )
    if len(steps) != len(schedule[1]):
        raise ValueError(
            f"trajectory must hold one latent per scheduled timestep: {len(schedule[1])} timesteps, "
            f"got {len(steps)} latents"
        )
    return steps
