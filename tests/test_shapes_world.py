"""The shapes world: deterministic, captions and masks match the drawing, the held-out split holds."""

import itertools

import numpy as np
import pytest

from benchmark import shapes_world as sw


def _scenes(seed: int, n: int, **kwargs) -> list[sw.Scene]:
    rng = np.random.default_rng(seed)
    return [sw.sample_scene(rng, **kwargs) for _ in range(n)]


def _rgb_distance(a, b) -> np.ndarray:
    return np.linalg.norm(np.asarray(a, float) - np.asarray(b, float), axis=-1)


def test_world_has_enough_colours_shapes_backgrounds():
    assert len(sw.COLOURS) >= 8 and len(sw.SHAPES) >= 8 and len(sw.BACKGROUNDS) >= 6
    assert set(sw.SHAPE_ASPECT) == set(sw.SHAPES)


def test_same_seed_same_scene_different_seed_different():
    a, b, c = _scenes(7, 5), _scenes(7, 5), _scenes(8, 5)
    for x, y in zip(a, b):
        assert x.caption == y.caption and x.objects == y.objects and x.background == y.background
        assert np.array_equal(x.image, y.image)
        assert all(np.array_equal(m, n) for m, n in zip(x.masks, y.masks))
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c))


def test_caption_format():
    objs = [sw.SceneObject("red", "star", (0, 0, 10, 10)), sw.SceneObject("blue", "house", (20, 0, 30, 10)),
            sw.SceneObject("white", "moon", (40, 0, 50, 10))]
    assert sw.caption("grass", objs[:2]) == "a red star and a blue house on a grass background"
    assert sw.caption("sea", objs) == "a red star, a blue house and a white moon on a sea background"
    assert sw.caption("grass", []) == "a grass background"
    assert sw.object_prompt("red", "star") == "a red star"
    assert sw.object_prompt("orange", "moon") == "an orange moon"


def test_caption_lists_every_object_and_the_background():
    for scene in _scenes(1, 100):
        assert scene.caption == sw.caption(scene.background, scene.objects)
        assert scene.caption.endswith(f"{scene.background} background")
        for obj in scene.objects:
            assert sw.object_prompt(obj.colour, obj.shape) in scene.caption


def test_masks_match_drawn_pixels_and_fill_their_box():
    for scene in _scenes(2, 100):
        assert scene.image.dtype == np.uint8 and scene.image.shape == (64, 64, 3)
        assert len(scene.masks) == len(scene.objects)
        for obj, mask in zip(scene.objects, scene.masks):
            assert mask.dtype == bool and mask.shape == (64, 64)
            assert np.all(scene.image[mask] == sw.COLOURS[obj.colour])
            # The silhouette fills its box exactly: its tight bounding box is the box.
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == obj.box


def test_boxes_inside_image_sized_and_separated():
    for scene in _scenes(3, 200):
        assert 1 <= len(scene.objects) <= 3
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            assert sw.OBJECT_MIN_PX <= max(x1 - x0, y1 - y0) <= sw.OBJECT_MAX_PX
        for a, b in itertools.combinations([o.box for o in scene.objects], 2):
            gap = sw.OBJECT_GAP_PX
            assert a[0] >= b[2] + gap or b[0] >= a[2] + gap or a[1] >= b[3] + gap or b[1] >= a[3] + gap
        # Distinct (colour, shape) per scene, so the caption is unambiguous.
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)


def test_object_size_range_is_a_parameter():
    rng = np.random.default_rng(5)
    longer = [max(o.box[2] - o.box[0], o.box[3] - o.box[1])
              for _ in range(200) for o in sw.sample_scene(rng, object_px=(20, 32)).objects]
    assert min(longer) >= 20 and max(longer) <= 32
    assert max(longer) > sw.OBJECT_MAX_PX  # larger than the default range allows
    for bad in [(2, 10), (30, 20), (20, 80)]:
        with pytest.raises(ValueError, match="object_px"):
            sw.sample_scene(rng, object_px=bad)


def test_n_objects_forms():
    rng = np.random.default_rng(4)
    assert len(sw.sample_scene(rng, n_objects=0).objects) == 0
    assert all(len(sw.sample_scene(rng, n_objects=3).objects) == 3 for _ in range(30))
    counts = {len(sw.sample_scene(rng, n_objects=(1, 2)).objects) for _ in range(30)}
    assert counts == {1, 2}


def test_train_split_never_held_out_and_heldout_always():
    for scene in _scenes(5, 300, split="train"):
        assert not any(sw.is_held_out(o.colour, o.shape, scene.background) for o in scene.objects)
    for scene in _scenes(6, 150, split="heldout", n_objects=3):
        assert all(sw.is_held_out(o.colour, o.shape, scene.background) for o in scene.objects)


def test_held_out_rule_keeps_every_attribute_and_pair_in_training():
    triples = list(itertools.product(sw.COLOURS, sw.SHAPES, sw.BACKGROUNDS))
    held = [t for t in triples if sw.is_held_out(*t)]
    assert 0.05 <= len(held) / len(triples) <= 0.15
    train = [t for t in triples if not sw.is_held_out(*t)]
    for i, j in itertools.combinations(range(3), 2):  # every attribute pair co-occurs in training
        pairs = {(t[i], t[j]) for t in train}
        assert len(pairs) == len({(t[i], t[j]) for t in triples})
    for background in sw.BACKGROUNDS:  # a 3-object held-out scene is possible on every background
        assert sum(sw.is_held_out(c, s, background) for c in sw.COLOURS for s in sw.SHAPES) >= 3


def test_every_colour_shape_background_occurs_in_train_scenes():
    scenes = _scenes(7, 400, split="train")
    assert {s.background for s in scenes} == set(sw.BACKGROUNDS)
    assert {o.colour for s in scenes for o in s.objects} == set(sw.COLOURS)
    assert {o.shape for s in scenes for o in s.objects} == set(sw.SHAPES)


def test_vocabulary_covers_every_caption_and_prompt_word():
    vocab = sw.vocabulary()
    assert len(vocab) == len(set(vocab))
    assert vocab == sw.vocabulary()  # fixed order
    words = set()
    for scene in _scenes(8, 200, split="any"):
        words.update(sw.CAPTION_TOKEN_PATTERN.findall(scene.caption))
    for colour, shape in itertools.product(sw.COLOURS, sw.SHAPES):
        words.update(sw.CAPTION_TOKEN_PATTERN.findall(sw.object_prompt(colour, shape)))
    for background in sw.BACKGROUNDS:
        words.update(sw.CAPTION_TOKEN_PATTERN.findall(sw.caption(background, [])))
    assert words <= set(vocab)


def test_colours_separated_from_each_other_and_from_backgrounds():
    rgb = np.array(list(sw.COLOURS.values()), float)
    pairwise = _rgb_distance(rgb[:, None], rgb[None])
    assert pairwise[~np.eye(len(rgb), dtype=bool)].min() >= 100
    rng = np.random.default_rng(9)
    for name in sw.BACKGROUNDS:
        pixels = np.concatenate([sw.render_background(name, 64, rng).reshape(-1, 3) for _ in range(20)])
        nearest = _rgb_distance(pixels[:, None].astype(float), rgb[None]).min()
        assert nearest >= 95, name


def test_backgrounds_textured_but_smooth_and_deterministic():
    for name in sw.BACKGROUNDS:
        canonical = sw.render_background(name)
        assert canonical.shape == (64, 64, 3) and canonical.dtype == np.uint8
        assert np.array_equal(canonical, sw.render_background(name))
        image = canonical.astype(float)
        step = np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean()
        assert step > 0.5, f"{name} is flat"
        assert step < 16, f"{name} is noisy"
        a = sw.render_background(name, 64, np.random.default_rng(0))
        b = sw.render_background(name, 64, np.random.default_rng(0))
        assert np.array_equal(a, b)


@pytest.mark.parametrize("size", [32, 96, 128, (96, 64), (64, 128)])
def test_other_sizes(size):
    width, height = (size, size) if isinstance(size, int) else size
    scale = min(width, height) / 64
    for scene in _scenes(10, 20, size=size):
        assert scene.image.shape == (height, width, 3)
        for obj, mask in zip(scene.objects, scene.masks):
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            assert max(x1 - x0, y1 - y0) <= round(sw.OBJECT_MAX_PX * scale)
            assert np.all(scene.image[mask] == sw.COLOURS[obj.colour])


@pytest.mark.parametrize("size", [64, 96, (96, 64)])
def test_random_box_covers_at_least_a_ninth(size):
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(11)
    for _ in range(200):
        x0, y0, x1, y1 = sw.random_box(rng, size)
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0) * (y1 - y0) >= width * height / 9


def test_draw_object_in_place_and_clipped():
    image = sw.render_background("sand")
    before = image.copy()
    mask = sw.draw_object(image, "blue", "circle", (-5, 50, 15, 70))  # leaves the frame at left and bottom
    assert mask.shape == (64, 64) and mask.any()
    assert np.all(image[mask] == sw.COLOURS["blue"])
    assert np.array_equal(image[~mask], before[~mask])
    assert not mask[:50].any() and not mask[:, 15:].any()


@pytest.mark.parametrize("shape", sw.SHAPES)
def test_shape_masks_fill_their_box(shape):
    for width, height in [(12, 12), (9, 12), (17, 13), (28, 28)]:
        mask = sw.shape_mask(shape, width, height)
        assert mask.shape == (height, width)
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def test_shapes_distinct_at_small_size():
    masks = {s: sw.shape_mask(s, 14, 14) for s in sw.SHAPES}
    for a, b in itertools.combinations(sw.SHAPES, 2):
        iou = (masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()
        assert iou < 0.85, (a, b, iou)


def test_render_scene_masks_are_visible_pixels():
    objs = [sw.SceneObject("red", "square", (10, 10, 30, 30)), sw.SceneObject("green", "circle", (20, 20, 40, 40))]
    scene = sw.render_scene("sky", objs, 64)
    assert not (scene.masks[0] & scene.masks[1]).any()
    assert np.all(scene.image[scene.masks[0]] == sw.COLOURS["red"])
    assert scene.masks[1][25, 25] and not scene.masks[0][25, 25]  # the later object covers the earlier one
    assert scene.masks[0][12, 12]


def test_many_training_scenes_are_valid_varied_and_never_held_out():
    """What the training loop relies on when it draws scenes on the fly (~0.2 ms each), over 2000 draws."""
    scenes = _scenes(12, 2000)
    for scene in scenes:
        assert scene.image.shape == (64, 64, 3) and scene.image.dtype == np.uint8
        lo, hi = sw.DEFAULT_N_OBJECTS
        assert lo <= len(scene.objects) <= hi and len(scene.masks) == len(scene.objects)
        assert len({(o.colour, o.shape) for o in scene.objects}) == len(scene.objects)  # distinct objects
        for obj, mask in zip(scene.objects, scene.masks):
            assert not sw.is_held_out(obj.colour, obj.shape, scene.background)
            rows, cols = np.nonzero(mask)
            x0, y0, x1, y1 = obj.box
            assert len(rows) and x0 <= cols.min() and cols.max() < x1 and y0 <= rows.min() and rows.max() < y1
            assert np.all(scene.image[mask] == sw.COLOURS[obj.colour])  # visible pixels are the object's colour
    drawn = [obj for scene in scenes for obj in scene.objects]
    assert {scene.background for scene in scenes} == set(sw.BACKGROUNDS)
    assert {obj.colour for obj in drawn} == set(sw.COLOURS) and {obj.shape for obj in drawn} == set(sw.SHAPES)
    assert len({scene.caption for scene in scenes}) > len(scenes) // 2  # varied, not a few captions repeated
