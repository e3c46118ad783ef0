"""Promises every model family's Session keeps, as checks the per-family test modules call on their own sessions."""

from __future__ import annotations

import numpy as np
import torch

from editor import Session


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
