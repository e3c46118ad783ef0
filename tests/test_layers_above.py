"""Layers above a change stay as they were (like a painting program), unless regenerating them is asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editor import EditSettings, Session
from pipelines import composite, masks, recomposite
from pipelines.masks import latent_mask
from tiny_models import IMAGE_SIZE, save_tiny_pipeline

STEPS = 6
SIZE = (IMAGE_SIZE, IMAGE_SIZE)
BOXES = [(0, 0, 16, 16), (8, 8, 26, 26), (18, 2, 31, 14)]  # layer 2 overlaps layer 1
PROMPTS = ["a red star", "a blue circle", "a white moon"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-above"))


@pytest.fixture(scope="module")
def pipeline(model_dir):
    return Session.from_pretrained(model_dir).pipeline


@pytest.fixture(params=["tight", "whole"])
def three_layers(request, pipeline, model_dir):
    session = Session(pipeline, model=str(model_dir),
                      defaults=EditSettings(num_inference_steps=STEPS, mask_fit=request.param))
    session.generate("a grass background", seed=5)
    for prompt, box in zip(PROMPTS, BOXES):
        session.edit(prompt, box)
    return session


def own_area(layer) -> np.ndarray:
    """Where a layer's own pixels are all that shows of it and the layers below (its soft mask is 1)."""
    return np.asarray(layer.mask) == 1.0


def test_recomposite_equals_compositing_the_same_pixels_over_the_new_picture():
    rng = np.random.default_rng(0)
    old_below, new_below, own = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3))
    soft = np.clip(rng.uniform(-0.5, 1.5, (16, 16)), 0, 1).astype(np.float32)
    moved = recomposite(composite(old_below, own, soft), old_below, new_below, soft)
    direct = composite(new_below, own, soft)
    assert np.abs(moved.astype(int) - direct.astype(int)).max() <= 1
    np.testing.assert_array_equal(moved[soft == 1], own[soft == 1])
    np.testing.assert_array_equal(moved[soft == 0], new_below[soft == 0])


def test_reediting_layer_1_of_3_keeps_layer_2_and_undo_restores_everything(three_layers):
    session = three_layers
    before_layers, before_image = session.layers, np.asarray(session.image).copy()
    session.replace(1, prompt="a green tree", seed=42)

    layer2_old, layer2 = before_layers[2], session.layers[2]
    assert layer2.info.get("restacked") and layer2.prompt == layer2_old.prompt and layer2.seed == layer2_old.seed
    kept = own_area(layer2_old)
    assert kept.any()
    np.testing.assert_array_equal(np.asarray(layer2.image)[kept], np.asarray(layer2_old.image)[kept])
    untouched = ~masks.box_mask(BOXES[0], SIZE)  # where the re-edit of layer 1 cannot reach
    np.testing.assert_array_equal(np.asarray(layer2.image)[untouched], np.asarray(layer2_old.image)[untouched])
    top_shows_layer2 = kept & (np.asarray(session.layers[3].mask) == 0)
    np.testing.assert_array_equal(np.asarray(session.image)[top_shows_layer2], before_image[top_shows_layer2])

    session.undo()
    assert session.layers == before_layers
    np.testing.assert_array_equal(np.asarray(session.image), before_image)


def test_a_kept_layers_memory_is_its_own_inside_its_mask_and_the_new_layer_below_outside(three_layers):
    session = three_layers
    old2 = session.layers[2]
    session.replace(1, prompt="a green tree", seed=42)
    new1, new2 = session.layers[1], session.layers[2]
    cells = latent_mask(np.asarray(old2.mask), tuple(old2.trajectory[0].shape[-2:]))[0, 0]
    for step in range(STEPS):
        np.testing.assert_array_equal(new2.trajectory[step][0][:, cells == 1], old2.trajectory[step][0][:, cells == 1])
        np.testing.assert_array_equal(new2.trajectory[step][0][:, cells == 0], new1.trajectory[step][0][:, cells == 0])


def test_regenerating_the_layers_above_is_an_explicit_choice(three_layers):
    session = three_layers
    old2 = session.layers[2]
    session.replace(1, prompt="a green tree", seed=42, layers_above="regenerate")
    assert "restacked" not in session.layers[2].info and session.layers[2] is not old2


def test_hiding_a_layer_keeps_the_layers_above_and_shows_the_picture_below_in_its_place(three_layers):
    session = three_layers
    before = session.layers
    session.set_visible(1, False)
    kept = own_area(before[2])
    np.testing.assert_array_equal(np.asarray(session.layers[2].image)[kept], np.asarray(before[2].image)[kept])
    only_hidden = masks.box_mask(BOXES[0], SIZE) & ~masks.box_mask(BOXES[1], SIZE) & ~masks.box_mask(BOXES[2], SIZE)
    np.testing.assert_array_equal(np.asarray(session.image)[only_hidden], np.asarray(before[0].image)[only_hidden])
    session.set_visible(1, True)
    assert np.abs(np.asarray(session.image).astype(int) - np.asarray(before[3].image).astype(int)).max() <= 1


def test_removing_a_layer_keeps_the_layers_above(three_layers):
    session = three_layers
    before = session.layers
    session.remove(1)
    assert [layer.prompt for layer in session.layers[1:]] == PROMPTS[1:]
    kept = own_area(before[2])
    np.testing.assert_array_equal(np.asarray(session.layers[1].image)[kept], np.asarray(before[2].image)[kept])


def test_an_edit_on_a_kept_stack_still_keeps_pixels_outside_its_mask(three_layers):
    session = three_layers
    session.replace(1, prompt="a green tree", seed=42)
    shown = np.asarray(session.image).copy()
    session.edit("a yellow heart", (20, 20, 30, 30))
    outside = ~masks.box_mask((20, 20, 30, 30), SIZE)
    np.testing.assert_array_equal(np.asarray(session.image)[outside], shown[outside])


def test_a_kept_layer_with_another_schedule_gets_its_memory_from_its_pixels(pipeline, model_dir):
    session = Session(pipeline, model=str(model_dir), defaults=EditSettings(num_inference_steps=STEPS))
    session.generate("a grass background", seed=5)
    session.edit(PROMPTS[0], BOXES[0])
    session.edit(PROMPTS[1], BOXES[1], num_inference_steps=STEPS + 2)
    session.replace(1, seed=3)
    layer = session.layers[2]
    assert len(layer.trajectory) == STEPS + 2 and layer.info.get("restacked")
    expected, _ = pipeline.trajectory_from_image(np.asarray(layer.image), num_inference_steps=STEPS + 2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(layer.trajectory, expected))


def test_an_unknown_layers_above_choice_is_a_clear_error(three_layers):
    with pytest.raises(ValueError, match="layers_above"):
        three_layers.replace(1, prompt="x", layers_above="repaint")
