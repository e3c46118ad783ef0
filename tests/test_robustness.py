"""Bad input never changes a session: every rejected call leaves the layer stack exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from editor import EditSettings, Session
from memory import MemoryStateError
from pipelines import MaskError
from tiny_models import IMAGE_SIZE, tiny_pipeline

SIZE = (IMAGE_SIZE, IMAGE_SIZE)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def session():
    session = Session(tiny_pipeline(4), model="tiny", defaults=EditSettings(num_inference_steps=2))
    session.generate("a grass background", seed=1)
    session.edit("a red star", (2, 2, 12, 12))
    return session


def snapshot(session):
    return session.layers, session.can_undo, session.can_redo, session.defaults


def wrong_masks():
    """Masks that must be refused: wrong size, empty, non-finite, negative, wrong rank or type."""
    wrong_size = st.tuples(st.integers(1, 40), st.integers(1, 40)).filter(lambda s: s != SIZE).map(
        lambda s: np.ones(s[::-1], dtype=np.uint8) * 255)
    empty = st.sampled_from([np.zeros(SIZE, dtype=bool), np.zeros(SIZE, dtype=np.float32),
                             Image.new("L", SIZE, 0), Image.new("RGBA", SIZE, (255, 255, 255, 0))])
    non_finite = st.sampled_from([np.nan, np.inf, -np.inf]).map(lambda v: np.full(SIZE, v, dtype=np.float32))
    negative = st.just(np.full(SIZE, -5, dtype=np.int16))
    wrong_rank = st.sampled_from([np.ones((2, 2, 2, 2)), np.ones(IMAGE_SIZE), np.ones((IMAGE_SIZE, IMAGE_SIZE, 2))])
    wrong_type = st.sampled_from(["mask", 3, None, b"\x89PNG", {"x": 1}, (1, 2, 3)])
    bad_boxes = st.tuples(*[st.floats(allow_nan=True, allow_infinity=True, width=32)] * 4).filter(
        lambda b: not all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]
        or b[2] <= 0 or b[3] <= 0 or b[0] >= IMAGE_SIZE or b[1] >= IMAGE_SIZE)
    return st.one_of(wrong_size, empty, non_finite, negative, wrong_rank, wrong_type, bad_boxes)


@FAST
@given(mask=wrong_masks())
def test_wrong_masks_are_refused_and_change_nothing(session, mask):
    before = snapshot(session)
    with pytest.raises((MaskError, TypeError)):
        session.edit("a red star", mask)
    assert snapshot(session) == before


@FAST
@given(values=st.one_of(
    st.integers(0, 255).map(lambda v: np.full(SIZE, v, dtype=np.uint8)),
    st.floats(0, 1).map(lambda v: np.full(SIZE, v, dtype=np.float32)),
))
def test_uniform_masks_binarise_at_half_their_range(session, values):
    """Non-binary values are accepted: painted means >= half. Refused only when nothing is painted."""
    before = snapshot(session)
    painted = values.dtype == np.uint8 and values[0, 0] >= 128 or values.dtype == np.float32 and values[0, 0] >= 0.5
    if painted:
        with pytest.warns(UserWarning, match="whole image"):
            session.edit("a red star", values)
        session.undo()
        assert snapshot(session)[0] == before[0]
    else:
        with pytest.raises(MaskError, match="empty"):
            session.edit("a red star", values)
        assert snapshot(session) == before


BAD_SETTINGS = st.one_of(
    st.fixed_dictionaries({"num_inference_steps": st.one_of(st.integers(max_value=0), st.integers(min_value=1001),
                                                            st.floats(), st.text(max_size=3))}),
    st.fixed_dictionaries({"guidance_scale": st.one_of(st.floats(max_value=-0.001), st.floats(min_value=50.001),
                                                       st.just(float("nan")), st.just(float("inf")))}),
    st.fixed_dictionaries({"free_steps_ratio": st.one_of(st.floats(max_value=-1e-6), st.floats(min_value=1.000001))}),
    st.fixed_dictionaries({"mask_dilation": st.one_of(st.integers(max_value=-1), st.integers(min_value=257))}),
    st.fixed_dictionaries({"mask_feather": st.one_of(st.integers(max_value=-1), st.floats(0.1, 3))}),
    st.fixed_dictionaries({"scheduler": st.text(max_size=8).filter(lambda s: s not in ("ddim", "dpm++", "euler"))}),
    st.fixed_dictionaries({"preserve": st.text(max_size=8).filter(lambda s: s not in ("pixels", "latents"))}),
    st.fixed_dictionaries({"attention": st.text(max_size=8).filter(lambda s: s not in ("bcg", "qd", "qd-background", "qd-previous", "mqd"))}),
    st.fixed_dictionaries({"negative_prompt": st.one_of(st.integers(), st.none().map(lambda _: 1.5))}),
    st.fixed_dictionaries({"seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63),
                                             st.floats(), st.text(max_size=3))}),
    st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in EditSettings.names() + ("seed",)),
                    st.integers(), min_size=1, max_size=2),
)


@FAST
@given(bad=BAD_SETTINGS)
def test_out_of_range_settings_are_refused_and_change_nothing(session, bad):
    before = snapshot(session)
    with pytest.raises((ValueError, TypeError)):
        session.edit("a red star", (0, 0, 10, 10), **bad)
    with pytest.raises((ValueError, TypeError)):
        session.set_defaults(**{k: v for k, v in bad.items() if k != "seed"} or {"seed": 1})
    assert snapshot(session) == before


@FAST
@given(prompt=st.text(min_size=0, max_size=40))
def test_any_unicode_prompt_is_accepted_or_refused_cleanly(session, prompt):
    """Unknown words map to <unk>; only length can refuse a prompt, with a message saying so."""
    before = snapshot(session)
    try:
        session.edit(prompt, (0, 0, 8, 8))
    except ValueError as error:
        assert "tokens long" in str(error)
        assert snapshot(session) == before
    else:
        assert session.layers[-1].prompt == prompt
        session.undo()


def test_non_string_prompts_are_refused(session):
    before = snapshot(session)
    for prompt in (None, 3, b"a red star", ["a red star"]):
        with pytest.raises(TypeError, match="prompt must be a string"):
            session.edit(prompt, (0, 0, 8, 8))
    assert snapshot(session) == before


@pytest.mark.parametrize("make_image", [
    lambda: Image.new("RGB", (1, 1), (10, 200, 30)),
    lambda: Image.new("P", (40, 20)),
    lambda: Image.new("LA", (30, 30), (100, 0)),
    lambda: Image.fromarray(np.full((20, 20), 60000, dtype=np.uint16)),
    lambda: np.random.default_rng(0).random((33, 17, 4)).astype(np.float32),
    lambda: np.zeros((10, 10), dtype=np.uint8),
], ids=["1x1", "palette", "transparent", "16-bit", "float-rgba", "grey-array"])
def test_odd_photos_are_converted_to_the_session_size(make_image):
    session = Session(tiny_pipeline(4), model="tiny", defaults=EditSettings(num_inference_steps=2))
    session.start_from_image(make_image(), "a sea background", seed=2)
    assert session.size == SIZE and np.asarray(session.image).dtype == np.uint8


@pytest.mark.parametrize("image, error", [
    (np.full((8, 8, 3), np.nan, dtype=np.float32), "NaN"),
    (np.zeros((8, 8, 3), dtype=np.int64), "uint8"),
    (np.zeros((8, 8, 5), dtype=np.uint8), "HxW"),
    ("photo.png", "PIL image"),
], ids=["nan", "int64", "5-channel", "path-string"])
def test_unusable_photos_are_refused_and_change_nothing(session, image, error):
    before = snapshot(session)
    with pytest.raises((ValueError, TypeError), match=error):
        session.start_from_image(image, "a sea background")
    assert snapshot(session) == before


def test_huge_photos_are_refused_before_any_work(session, monkeypatch):
    import editor.images
    monkeypatch.setattr(editor.images, "MAX_INPUT_PIXELS", 1000)
    before = snapshot(session)
    with pytest.raises(ValueError, match="at most 1000 pixels"):
        session.start_from_image(Image.new("RGB", (40, 40)), "a sea background")
    assert snapshot(session) == before


def test_operations_in_the_wrong_state_are_clear_errors():
    session = Session(tiny_pipeline(4), model="tiny", defaults=EditSettings(num_inference_steps=2))
    for call in (lambda: session.undo(), lambda: session.redo(), lambda: session.edit("a red star", (0, 0, 4, 4)),
                 lambda: session.remove(1), lambda: session.save("/tmp/never.lep")):
        with pytest.raises(MemoryStateError):
            call()
    session.generate("a grass background", seed=1)
    session.edit("a red star", (0, 0, 10, 10))
    session.remove(1)
    with pytest.raises(IndexError, match="layers 0..0"):
        session.replace(1, prompt="a blue circle")  # re-edit a removed layer
    session.undo()
    session.edit("a blue circle", (10, 10, 20, 20))  # a new edit clears the redo stack
    with pytest.raises(MemoryStateError):
        session.redo()
