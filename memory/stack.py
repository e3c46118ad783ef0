"""The layer stack of an edit session, with snapshot-based undo and redo.

Records are immutable, so a snapshot of the stack is just a tuple of records and costs a few pointers. Every change
goes through `commit`, which remembers the previous tuple: undo of any operation (push, replace, remove, a
visibility toggle, a replay) restores the exact earlier stack, the very same record objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from memory.record import LayerRecord, buffer_nbytes


class MemoryStateError(ValueError):
    """An operation the layer stack cannot perform in its current state; the stack is left unchanged."""


class _Step(NamedTuple):
    """One history entry: the stack on one side of an operation, and the operation's label."""

    layers: tuple[LayerRecord, ...]
    label: str


def check_layer_stack(layers: Sequence[LayerRecord]) -> None:
    """Raise MemoryStateError unless `layers` is a valid stack: one background first, then edits, one image size.

    Shared with the project loader so that a stack on disk obeys the same rules as one in memory.
    """
    if not layers:
        raise MemoryStateError("A layer stack needs a background as its first layer; got no layers.")
    for index, record in enumerate(layers):
        if not isinstance(record, LayerRecord):
            raise MemoryStateError(f"Layer {index} must be a LayerRecord, got {type(record).__name__}.")
        expected_kind = "background" if index == 0 else "edit"
        if record.kind != expected_kind:
            raise MemoryStateError(f"Layer {index} must be kind {expected_kind!r}, got {record.kind!r}.")
        if record.image.shape != layers[0].image.shape:
            raise MemoryStateError(
                f"Layer {index} has image shape {record.image.shape}, but the background has {layers[0].image.shape}."
            )


class LayerMemory:
    """An ordered stack of LayerRecords (index 0 = background) with undo and redo of every commit."""

    def __init__(self, history_limit: int | None = None) -> None:
        """`history_limit` caps how many operations can be undone (oldest dropped first); None keeps them all."""
        if history_limit is not None and (
            isinstance(history_limit, bool) or not isinstance(history_limit, int) or history_limit < 0
        ):
            raise ValueError(f"history_limit must be None or an int >= 0, got {history_limit!r}")
        self._history_limit = history_limit
        self._layers: tuple[LayerRecord, ...] = ()
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []

    # --- reading ---------------------------------------------------------------------------------------------------

    @property
    def layers(self) -> tuple[LayerRecord, ...]:
        return self._layers

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, index: int) -> LayerRecord:
        return self._layers[index]

    @property
    def top(self) -> LayerRecord | None:
        return self._layers[-1] if self._layers else None

    @property
    def history_limit(self) -> int | None:
        return self._history_limit

    def trajectory_of(self, index: int) -> tuple[torch.Tensor, ...]:
        """The latent trajectory of layer `index`: what BCG blends towards when editing on top of it."""
        if not -len(self._layers) <= index < len(self._layers):
            raise IndexError(f"No layer {index}: the stack has {len(self._layers)} layers.")
        return self._layers[index].trajectory

    def visible_layers(self) -> list[tuple[int, LayerRecord]]:
        """(index, record) of each visible layer, bottom first: the regions and prompts MQD routes attention to."""
        return [(index, record) for index, record in enumerate(self._layers) if record.visible]

    # --- changing --------------------------------------------------------------------------------------------------

    def commit(self, new_layers: Sequence[LayerRecord], label: str) -> None:
        """Make `new_layers` the stack, remembering the current one under `label` for undo; clears redo.

        This is the only mutation: push, replace, remove and visibility changes are all commits of a new tuple.
        """
        if not isinstance(label, str) or not label:
            raise ValueError(f"label must be a non-empty str naming the operation, got {label!r}")
        new_layers = tuple(new_layers)
        check_layer_stack(new_layers)
        self._undo.append(_Step(self._layers, label))
        self._trim_undo()
        self._redo.clear()
        self._layers = new_layers

    def push(self, record: LayerRecord) -> None:
        """Add `record` on top; the background must be pushed first, edits after it."""
        self.commit(self._layers + (record,), record.kind)

    def undo(self) -> str:
        """Restore the stack as it was before the last commit; returns the undone operation's label."""
        if not self._undo:
            raise MemoryStateError(self._why_no_undo())
        previous = self._undo[-1]
        if not previous.layers:
            raise MemoryStateError(
                "Nothing to undo: the background is the first layer. Generate a new background instead."
            )
        self._undo.pop()
        self._redo.append(_Step(self._layers, previous.label))
        self._layers = previous.layers
        return previous.label

    def redo(self) -> str:
        """Re-apply the last undone operation; returns its label."""
        if not self._redo:
            raise MemoryStateError("Nothing to redo: no operation has been undone since the last change.")
        following = self._redo.pop()
        self._undo.append(_Step(self._layers, following.label))
        self._trim_undo()
        self._layers = following.layers
        return following.label

    def clear_history(self) -> None:
        """Forget undo and redo (e.g. after loading a project, or to free the memory old layers hold)."""
        self._undo.clear()
        self._redo.clear()

    # --- history, for a UI -----------------------------------------------------------------------------------------

    @property
    def can_undo(self) -> bool:
        return bool(self._undo) and bool(self._undo[-1].layers)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_labels(self) -> list[str]:
        """Labels of the operations undo would revert, the next one first."""
        return [step.label for step in reversed(self._undo) if step.layers]

    @property
    def redo_labels(self) -> list[str]:
        """Labels of the operations redo would re-apply, the next one first."""
        return [step.label for step in reversed(self._redo)]

    # --- accounting ------------------------------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes held by the stack and its history, each record and each tensor or array counted once.

        Snapshots share records, and `LayerRecord.replace` shares tensors, so summing per snapshot would overcount.
        """
        records = {id(r): r for step in (*self._undo, *self._redo) for r in step.layers}
        records.update((id(r), r) for r in self._layers)
        buffers = {id(b): b for record in records.values() for b in record.buffers()}
        return sum(buffer_nbytes(b) for b in buffers.values())

    def _trim_undo(self) -> None:
        if self._history_limit is not None and len(self._undo) > self._history_limit:
            del self._undo[: len(self._undo) - self._history_limit]

    def _why_no_undo(self) -> str:
        if not self._layers:
            return "Nothing to undo: the layer stack is empty."
        return (
            "Nothing to undo: no earlier state is kept "
            "(history was cleared or capped, or the project was just loaded)."
        )

    def __repr__(self) -> str:
        return f"LayerMemory(layers={len(self._layers)}, undo={len(self.undo_labels)}, redo={len(self._redo)})"
