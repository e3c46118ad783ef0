"""The exact detector: accurate on drawn scenes, robust to mild degradation, silent on plain background."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from benchmark import detector as det
from benchmark import shapes_world as sw

STAR = sw.SceneObject("red", "star", (10, 12, 34, 35))
HOUSE = sw.SceneObject("blue", "house", (40, 30, 60, 51))


@pytest.fixture(scope="module")
def scene() -> sw.Scene:
    return sw.render_scene("sea", [STAR, HOUSE], 64, np.random.default_rng(0))


def test_clean_accuracy_at_least_98_percent():
    result = det.validate(n=300, seed=0)
    for key in ("colour_recall", "colour_specificity", "shape_recall", "shape_specificity",
                "background_specificity", "colour_accuracy", "shape_accuracy"):
        assert result[key] >= 0.98, (key, result)
    assert result["n_objects"] >= 300


def test_perturbed_accuracy():
    result = det.validate(n=100, seed=1, perturb=True)
    assert result["colour_accuracy"] >= 0.97, result
    assert result["shape_accuracy"] >= 0.95, result


def test_finds_the_right_object(scene):
    hit = det.detect(scene.image, STAR.box, "red", "star")
    assert hit.colour_found and hit.shape_found and hit.best_shape == "star"
    assert hit.score > 0.95 and hit.pixels == scene.masks[0].sum()
    colour_only = det.detect(scene.image, STAR.box, "red")
    assert colour_only.colour_found and colour_only.shape_found is None


def test_rejects_wrong_colour_and_wrong_shape(scene):
    for colour in sw.COLOURS:
        if colour != "red":
            assert not det.detect(scene.image, STAR.box, colour).colour_found, colour
    for shape in sw.SHAPES:
        if shape != "star":
            found = det.detect(scene.image, STAR.box, "red", shape)
            assert found.colour_found and not found.shape_found, shape
    # The blue house is not inside the star's box.
    assert not det.detect(scene.image, STAR.box, "blue").colour_found


def test_empty_region_finds_nothing():
    rng = np.random.default_rng(2)
    for background in sw.BACKGROUNDS:
        image = sw.render_background(background, 64, rng)
        assert det.classify(image, (0, 0, 64, 64)) == []
        for colour in sw.COLOURS:
            hit = det.detect(image, (0, 0, 64, 64), colour, "circle")
            assert not hit.colour_found and hit.shape_found is False and hit.pixels == 0


def test_box_and_mask_regions_agree(scene):
    box_mask = np.zeros((64, 64), dtype=bool)
    x0, y0, x1, y1 = HOUSE.box
    box_mask[y0:y1, x0:x1] = True
    for colour, shape in [("blue", "house"), ("blue", "square"), ("red", "house")]:
        assert det.detect(scene.image, HOUSE.box, colour, shape) == det.detect(scene.image, box_mask, colour, shape)
    # An object's own mask as region works too.
    assert det.detect(scene.image, scene.masks[1], "blue", "house").shape_found


def test_pil_input_and_classify(scene):
    assert det.detect(Image.fromarray(scene.image), STAR.box, "red", "star") == det.detect(scene.image, STAR.box,
                                                                                          "red", "star")
    found = det.classify(scene.image, (0, 0, 64, 64))
    assert [(c, s) for c, s, _ in found] == [("blue", "house"), ("red", "star")]  # largest (by pixels) first


def test_robust_to_blur_shift_and_noise(scene):
    rng = np.random.default_rng(3)
    image = scene.image.astype(float) + np.array([12, -10, 8])  # colour cast
    image = ndimage.gaussian_filter(image, sigma=(0.8, 0.8, 0)) + rng.normal(0, 5, image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    assert det.detect(image, STAR.box, "red", "star").shape_found
    assert det.detect(image, HOUSE.box, "blue", "house").shape_found
    assert not det.detect(image, STAR.box, "pink").colour_found


def test_tiny_speck_is_not_an_object():
    image = sw.render_background("grass")
    image[30:33, 30:33] = sw.COLOURS["red"]
    assert not det.detect(image, (20, 20, 44, 44), "red").colour_found


def test_edge_blend_is_not_another_colour():
    """Pink blurred over the dark night sky blends to purple-ish pixels at its rim: that is no purple object."""
    scene = sw.render_scene("night", [sw.SceneObject("pink", "square", (16, 16, 44, 44))], 64)
    image = ndimage.gaussian_filter(scene.image.astype(float), sigma=(1.0, 1.0, 0))
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    assert det.detect(image, (10, 10, 50, 50), "pink", "square").shape_found
    assert not det.detect(image, (10, 10, 50, 50), "purple").colour_found


def test_unknown_names_raise(scene):
    with pytest.raises(ValueError):
        det.detect(scene.image, STAR.box, "teal")
    with pytest.raises(ValueError):
        det.detect(scene.image, STAR.box, "red", "hexagon")
