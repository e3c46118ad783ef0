"""Rough mask in, tight edit out: the object's soft mask is found while denoising, kept with the layer, and the
background inside the rough mask stays on the memory wherever the object is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipelines.tight as tight
from editor import EditSettings, NothingDrawnWarning, Session
from pipelines import masks
from tiny_models import IMAGE_SIZE, save_tiny_pipeline

STEPS = 6
ROUGH_BOX = (4, 4, 28, 28)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-tight"))


@pytest.fixture(scope="module")
def pipeline(model_dir):
    return Session.from_pretrained(model_dir, num_inference_steps=STEPS).pipeline


@pytest.fixture
def session(pipeline, model_dir):
    session = Session(pipeline, model=str(model_dir), defaults=EditSettings(num_inference_steps=STEPS))
    session.generate("a grass background", seed=3)
    return session


# ------------------------------------------------------------------ pure functions
def test_an_empty_signal_marks_no_object_cell():
    region = torch.ones(1, 1, 4, 4)
    assert not tight.object_cells(torch.zeros(1, 1, 4, 4), region, 0.2, floor=1e-3).any()


def test_object_cells_are_the_strong_departures_inside_the_region():
    signal = torch.zeros(1, 1, 4, 4)
    signal[0, 0, 1, 1], signal[0, 0, 1, 2], signal[0, 0, 3, 3] = 1.0, 0.6, 5.0  # (3, 3) lies outside the region
    region = torch.zeros(1, 1, 4, 4)
    region[..., :3, :3] = 1.0
    cells = tight.object_cells(signal, region, share=0.5, floor=1e-3)[0, 0]
    assert cells[1, 1] and cells[1, 2] and cells.sum() == 2


def test_the_object_share_rises_over_the_blended_steps():
    shares = [tight.object_share(step, 10) for step in range(10)]
    assert shares[0] == tight.OBJECT_SHARE_START and shares[-1] == pytest.approx(tight.OBJECT_SHARE_END)
    assert all(a < b for a, b in zip(shares, shares[1:]))


def _scene_with_object():
    previous = np.full((32, 32, 3), 100, dtype=np.uint8)
    decoded = previous.copy()
    decoded[10:18, 10:18] = (220, 30, 30)  # the object
    decoded[26:30, 2:6] = (200, 200, 200)  # a change that does not touch the object's cells
    decoded[4:8, 4:8] += 3  # a faint tone shift: below the change floor
    region = np.zeros((32, 32), dtype=bool)
    region[2:30, 2:30] = True
    seeds = np.zeros((32, 32), dtype=bool)
    seeds[12:16, 12:16] = True
    return previous, decoded, region, seeds


def test_the_silhouette_is_the_changed_pixels_connected_to_the_object():
    previous, decoded, region, seeds = _scene_with_object()
    silhouette = tight.object_pixels(decoded, previous, region, seeds)
    expected = np.zeros_like(region)
    expected[10:18, 10:18] = True
    np.testing.assert_array_equal(silhouette, expected)


def test_a_shadow_attached_to_the_object_is_kept_and_a_faint_one_is_not():
    """The limit of the soft edge: an effect outside the silhouette is kept when it changes pixels clearly and
    touches the object; a faint one (below the change floor or Otsu's split) is left to the old background."""
    previous, decoded, region, seeds = _scene_with_object()
    decoded[18:22, 12:20] = 40  # a dark shadow under the object: 60 levels of change
    assert tight.object_pixels(decoded, previous, region, seeds)[18:22, 12:20].all()
    decoded[18:22, 12:20] = 92  # a faint shadow: 8 levels
    assert not tight.object_pixels(decoded, previous, region, seeds)[18:22, 12:20].any()


def test_the_soft_mask_is_one_on_the_object_feathered_outside_and_zero_outside_the_region():
    previous, decoded, region, seeds = _scene_with_object()
    silhouette = tight.object_pixels(decoded, previous, region, seeds)
    _, region_soft = masks.refine(region, 0, 2)
    soft = tight.soft_object_mask(silhouette, region_soft, feather_px=2)
    assert (soft[silhouette] == 1).all()
    ring = masks.dilate(silhouette, 2) & ~silhouette
    assert ((soft[ring] > 0) & (soft[ring] < 1)).all()
    assert (soft[~masks.dilate(silhouette, 2)] == 0).all() and (soft[~region] == 0).all()


# ------------------------------------------------------------------ through the pipeline
def test_a_step_whose_object_signal_is_empty_keeps_the_whole_region_on_the_memory(session, monkeypatch):
    real = tight.departure
    calls = []

    def silent_at_step_two(proposed, remembered):
        calls.append(None)
        signal = real(proposed, remembered)
        return torch.zeros_like(signal) if len(calls) == 3 else signal

    monkeypatch.setattr(tight, "departure", silent_at_step_two)
    below = session.layers[0].trajectory
    session.edit("a red star", mask=ROUGH_BOX)
    edited = session.layers[1].trajectory
    assert torch.equal(edited[2], below[2])  # step 2 (0-based): everything on the memory
    assert not torch.equal(edited[1], below[1])  # other steps do paint inside the region


def test_an_edit_that_changes_nothing_paints_nothing_and_says_so(session):
    """The edit prompt equals the background's and the noise is shared: no departure, no object, no pixel change."""
    before = np.asarray(session.image).copy()
    with pytest.warns(NothingDrawnWarning, match="nothing was drawn"):
        session.edit("a grass background", mask=ROUGH_BOX, attention="bcg")
    layer = session.layers[1]
    assert layer.info["painted_pixels"] == 0 and layer.info["changed_pixels"] == 0 and not layer.mask.any()
    np.testing.assert_array_equal(np.asarray(session.image), before)


def test_the_tight_mask_lies_inside_the_rough_mask_and_pixels_outside_it_stay_exact(session, recwarn):
    before = np.asarray(session.image).copy()
    session.edit("a red star", mask=ROUGH_BOX)
    assert not [w for w in recwarn if issubclass(w.category, NothingDrawnWarning)]
    layer = session.layers[1]
    rough = masks.box_mask(ROUGH_BOX, (IMAGE_SIZE, IMAGE_SIZE))
    assert layer.info["mask_fit"] == "tight" and layer.mask.dtype == np.float32
    assert 0 < np.count_nonzero(layer.mask) < rough.sum()
    assert (layer.mask[~rough] == 0).all()
    after = np.asarray(session.image)
    np.testing.assert_array_equal(after[layer.mask == 0], before[layer.mask == 0])


def test_whole_mask_repaint_is_the_rough_masks_soft_mask(session):
    session.edit("a red star", mask=ROUGH_BOX, mask_fit="whole")
    _, soft = masks.refine(masks.box_mask(ROUGH_BOX, (IMAGE_SIZE, IMAGE_SIZE)), 0, 2)
    np.testing.assert_array_equal(session.layers[1].mask, soft)


def test_later_edits_route_earlier_layers_by_their_tight_mask(session, monkeypatch):
    session.edit("a red star", mask=ROUGH_BOX)
    seen = {}
    real_call = type(session.pipeline).__call__

    def spy(pipeline, *args, **kwargs):
        seen["earlier"] = [mask for _, mask in kwargs["edit"].earlier_regions]
        return real_call(pipeline, *args, **kwargs)

    monkeypatch.setattr(type(session.pipeline), "__call__", spy)
    session.edit("a blue circle", mask=(0, 0, 16, 16))
    np.testing.assert_array_equal(seen["earlier"][1], session.layers[1].mask > 0)


def test_the_tight_mask_is_replayed_restored_by_undo_and_saved_exactly(session, pipeline, model_dir, tmp_path):
    session.edit("a red star", mask=ROUGH_BOX)
    session.edit("a blue circle", mask=(0, 0, 16, 16))
    masks_before = [layer.mask.copy() for layer in session.layers]
    session.replace(1, seed=11)  # layer 2 is replayed on the new layer 1
    session.undo()
    for layer, expected in zip(session.layers, masks_before):
        np.testing.assert_array_equal(layer.mask, expected)
    session.replace(1, prompt="a red star")  # same prompt, mask and seed: the replay repeats every mask exactly
    for layer, expected in zip(session.layers, masks_before):
        np.testing.assert_array_equal(layer.mask, expected)
    session.save(tmp_path / "scene.lep")
    loaded = Session.load(tmp_path / "scene.lep", pipeline=pipeline)
    for layer, expected in zip(loaded.layers, masks_before):
        np.testing.assert_array_equal(layer.mask, expected)


def test_layers_saved_before_tight_edits_replay_as_whole_mask_repaints():
    assert EditSettings.from_dict({"num_inference_steps": 4}).mask_fit == "whole"
    assert EditSettings.from_dict({"mask_fit": "tight"}).mask_fit == "tight"
    assert EditSettings().mask_fit == "tight"


def test_with_no_blended_step_the_silhouette_is_found_in_the_whole_region(session, recwarn):
    """free_steps_ratio=1 blends no step, so no object was tracked: the changed pixels anywhere in the region count."""
    session.edit("a red star", mask=ROUGH_BOX, free_steps_ratio=1.0)
    layer = session.layers[1]
    assert layer.info["blended_steps"] == 0 and layer.info["painted_pixels"] > 0
    assert not [w for w in recwarn if issubclass(w.category, NothingDrawnWarning)]
