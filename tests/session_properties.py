"""Promises every model family's Session keeps, as checks the per-family test modules call on their own sessions."""

from __future__ import annotations

import numpy as np
import torch

from editor import Session
from pipelines import masks


def check_undo_then_redo_is_bit_identical(session: Session, edits) -> None:
    for prompt, box in edits[:3]:
        session.edit(prompt, box)
    images = [np.asarray(layer.image).copy() for layer in session.layers]
    session.undo()
    session.undo()
    np.testing.assert_array_equal(np.asarray(session.image), images[1])
    session.redo()
    session.redo()
    assert all(np.array_equal(layer.image, image) for layer, image in zip(session.layers, images))


def check_save_load_then_edit_matches(session: Session, edits, path) -> Session:
    """Save after one edit, reload the recorded model, edit both: the images agree bit for bit."""
    session.edit(*edits[0])
    session.save(path)
    reloaded = Session.load(path, device="cpu")
    np.testing.assert_array_equal(np.asarray(reloaded.image), np.asarray(session.image))
    for key in session.layers[1].extra_tensors:  # token masks / pooled embeddings come back exactly
        assert torch.equal(reloaded.layers[1].extra_tensors[key], session.layers[1].extra_tensors[key])
    reloaded.edit(*edits[1])
    session.edit(*edits[1])
    np.testing.assert_array_equal(np.asarray(reloaded.image), np.asarray(session.image))
    return reloaded


def union_of(boxes, size) -> np.ndarray:
    """Pixels covered by any of `boxes` in an image of `size` = (width, height)."""
    union = np.zeros(size[::-1], dtype=bool)
    for box in boxes:
        union |= masks.box_mask(box, size)
    return union


def check_reediting_layer_1_regenerating_the_layers_above_replays_exactly(session: Session, boxes, first_prompt,
                                                                         size) -> None:
    """On a session of a background and len(boxes) edits: re-editing layer 1 with its own prompt, mask and seed
    and layers_above="regenerate" runs layers 1..n again bit for bit; another prompt changes only the boxes; undo
    goes back to the replayed stack."""
    before = session.layers
    session.replace(1, prompt=first_prompt, layers_above="regenerate")  # same prompt, mask and seed
    replayed = session.layers
    assert all(new is not old for new, old in zip(replayed[1:], before[1:])), "the layers above ran again"
    for new, old in zip(replayed, before):
        np.testing.assert_array_equal(new.image, old.image)
        np.testing.assert_array_equal(new.mask, old.mask)
        assert all(torch.equal(a, b) for a, b in zip(new.trajectory, old.trajectory))
    session.replace(1, prompt="a green tree", seed=42, layers_above="regenerate")
    assert not np.array_equal(np.asarray(session.image), np.asarray(replayed[-1].image))
    outside = ~union_of(boxes, size)
    np.testing.assert_array_equal(np.asarray(session.image)[outside], np.asarray(before[0].image)[outside])
    session.undo()
    assert session.layers == replayed


def three_regions(side: int = 16) -> list[np.ndarray]:
    """MQD test regions on a side x side grid: background everywhere, layer 1 on the left half, layer 2 (the edit)
    overlapping it in the middle."""
    background = np.ones((side, side), dtype=bool)
    left = np.zeros((side, side), dtype=bool)
    left[:, :side // 2] = True
    middle = np.zeros((side, side), dtype=bool)
    middle[side // 4:3 * side // 4, side // 4:3 * side // 4] = True
    return [background, left, middle]
