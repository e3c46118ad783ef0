"""The core promises of a Session, on tiny random SD components loaded from a saved folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from editor import EditSettings, Session
from memory import MemoryStateError, ProjectError
from pipelines import MaskError, masks
from tiny_models import IMAGE_SIZE, MAX_TOKENS, save_tiny_pipeline

STEPS = 6
EDITS = [  # (prompt, box) five edits with different masks
    ("a red star", (2, 2, 14, 14)),
    ("a blue circle", (18, 4, 30, 16)),
    ("a white moon", (6, 18, 20, 30)),
    ("a yellow heart", (10, 10, 24, 22)),
    ("a green tree", (22, 20, 31, 31)),
]


@pytest.fixture(scope="module", params=[4, 9], ids=["text2img-unet", "inpainting-unet"])
def model_dir(request, tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp(f"tiny{request.param}"), in_channels=request.param)


@pytest.fixture(scope="module")
def shared_pipeline(model_dir):
    return Session.from_pretrained(model_dir, num_inference_steps=STEPS).pipeline


def _session(pipeline, model_dir) -> Session:
    return Session(pipeline, model=str(model_dir), defaults=EditSettings(num_inference_steps=STEPS))


def state_of(session: Session):
    """Everything observable about a session's stack, for 'nothing changed' assertions."""
    return ([id(layer) for layer in session.layers], session.can_undo, session.can_redo,
            None if session.image is None else np.asarray(session.image).copy())


def assert_same_state(before, after):
    assert before[:3] == after[:3]
    assert (before[3] is None and after[3] is None) or np.array_equal(before[3], after[3])


@pytest.fixture
def session(shared_pipeline, model_dir):
    session = _session(shared_pipeline, model_dir)
    session.generate("a grass background", seed=11)
    return session


def test_from_pretrained_loads_a_saved_folder(model_dir):
    session = Session.from_pretrained(model_dir)
    assert session.pipeline.default_size == (IMAGE_SIZE, IMAGE_SIZE)
    assert session.image is None and session.layers == ()


def test_background_is_bit_identical_after_five_edits(session):
    background = np.asarray(session.image).copy()
    union = np.zeros(background.shape[:2], dtype=bool)
    for prompt, box in EDITS:
        before = np.asarray(session.image).copy()
        session.edit(prompt, box)
        union |= masks.box_mask(box, session.size)
        assert not np.array_equal(np.asarray(session.image), before), "an edit must change something"
    after = np.asarray(session.image)
    assert np.array_equal(after[~union], background[~union])
    assert len(session.layers) == 6


def test_memory_holds_one_latent_per_step_per_layer(session):
    session.edit("a red star", EDITS[0][1])
    session.edit("a blue circle", EDITS[1][1], num_inference_steps=STEPS + 2)  # a different schedule
    lengths = [len(layer.trajectory) for layer in session.layers]
    assert lengths == [STEPS, STEPS, STEPS + 2]
    assert all(len(layer.schedule[1]) == len(layer.trajectory) for layer in session.layers)
    assert [layer.info["bcg"] for layer in session.layers] == ["none", "memory", "renoise"]


def test_bcg_follows_the_remembered_latent_of_the_same_step(session):
    """Outside the mask, the latent after step i is the stored latent of step i of the layer below."""
    below = session.layers[-1]
    box = (0, 0, 16, 16)
    seen = []

    def record(pipeline, step, timestep, tensors):
        seen.append(tensors["latents"].clone())
        return tensors

    session.edit("a red star", box, callback_on_step_end=record, free_steps_ratio=0.0)
    latent_region = masks.latent_mask(masks.box_mask(box, session.size), tuple(seen[0].shape[-2:]))[0, 0]
    outside = latent_region == 0
    for step, latents in enumerate(seen):
        assert torch.equal(latents[0][:, outside], below.trajectory[step][0].float()[:, outside]), step
        if step + 1 < len(seen):  # and not the neighbouring step's latent: BCG reads the right index
            assert not torch.equal(latents[0][:, outside], below.trajectory[step + 1][0].float()[:, outside])


def test_switching_bcg_off_lets_the_background_latent_drift(session):
    below = session.layers[-1]
    seen = []
    session.edit("a red star", (0, 0, 16, 16), free_steps_ratio=1.0,
                 callback_on_step_end=lambda p, i, t, d: seen.append(d["latents"].clone()) or d)
    assert session.layers[-1].info["blended_steps"] == 0
    assert not torch.equal(seen[0][0, :, 12:, 12:], below.trajectory[0][0, :, 12:, 12:].float())


def test_undo_then_redo_returns_bit_identical_images(session):
    for prompt, box in EDITS[:3]:
        session.edit(prompt, box)
    images = [np.asarray(layer.image).copy() for layer in session.layers]
    session.undo()
    session.undo()
    assert np.array_equal(np.asarray(session.image), images[1])
    session.redo()
    session.redo()
    assert np.array_equal(np.asarray(session.image), images[3])
    assert [np.array_equal(a.image, b) for a, b in zip(session.layers, images)] == [True] * 4


def test_undo_past_the_background_is_a_clear_error(session):
    session.edit(*EDITS[0])
    session.undo()
    before = state_of(session)
    with pytest.raises(MemoryStateError, match="background"):
        session.undo()
    assert_same_state(before, state_of(session))


def test_save_load_then_edit_matches_editing_without_save(session, shared_pipeline, tmp_path):
    session.edit(*EDITS[0])
    for path in (tmp_path / "project", tmp_path / "project.lep"):
        session.save(path)
        reloaded = Session.load(path, pipeline=shared_pipeline)
        assert np.array_equal(np.asarray(reloaded.image), np.asarray(session.image))
        reloaded.edit(*EDITS[1])
    session.edit(*EDITS[1])
    assert np.array_equal(np.asarray(reloaded.image), np.asarray(session.image))


def test_load_reloads_the_recorded_model(session, tmp_path):
    session.save(tmp_path / "p.lep")
    reloaded = Session.load(tmp_path / "p.lep")
    assert reloaded.model == session.model
    assert np.array_equal(np.asarray(reloaded.image), np.asarray(session.image))


def test_new_seed_changes_the_edit_and_same_seed_repeats_it(session):
    first = np.asarray(session.edit("a red star", (4, 4, 20, 20))).copy()
    session.undo()
    again = np.asarray(session.edit("a red star", (4, 4, 20, 20))).copy()
    session.undo()
    other = np.asarray(session.edit("a red star", (4, 4, 20, 20), seed=999)).copy()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert session.layers[-1].seed == 999


def test_negative_prompt_and_scheduler_choice_change_the_result(session):
    base = np.asarray(session.edit("a red star", (4, 4, 20, 20))).copy()
    session.undo()
    negative = np.asarray(session.edit("a red star", (4, 4, 20, 20), negative_prompt="a blue circle")).copy()
    session.undo()
    dpm = np.asarray(session.edit("a red star", (4, 4, 20, 20), scheduler="dpm++")).copy()
    assert not np.array_equal(base, negative)
    assert not np.array_equal(base, dpm)


def test_preserve_latents_lets_pixels_outside_drift(session):
    """The paper's behaviour: only latents are kept, so the VAE round trip changes far pixels."""
    background = np.asarray(session.image).copy()
    session.edit("a red star", (0, 0, 12, 12), preserve="latents")
    assert not np.array_equal(np.asarray(session.image)[20:, 20:], background[20:, 20:])


def test_dilation_grows_the_edited_region_and_feather_stays_inside(session):
    session.edit("a red star", (10, 10, 20, 20), mask_dilation=2, mask_feather=3)
    layer = session.layers[-1]
    assert layer.info["region_pixels"] == 14 * 14
    assert layer.mask[9, 15] > 0 and layer.mask[7, 15] == 0
    assert layer.user_mask.sum() == 100 * 255


def test_mask_forms_agree(session):
    box = (4, 6, 20, 18)
    array = masks.box_mask(box, session.size)
    results = []
    for mask in (box, array, array.astype(np.uint8) * 255, Image.fromarray(array.astype(np.uint8) * 255),
                 array.astype(np.float32)):
        results.append(np.asarray(session.edit("a red star", mask)).copy())
        session.undo()
    assert all(np.array_equal(results[0], other) for other in results[1:])


def test_session_defaults_apply_until_overridden(session):
    session.set_defaults(num_inference_steps=4)
    session.edit("a red star", (0, 0, 10, 10))
    assert len(session.layers[-1].trajectory) == 4
    session.edit("a red star", (0, 0, 10, 10), num_inference_steps=5)
    assert len(session.layers[-1].trajectory) == 5
    with pytest.raises(TypeError, match="unknown setting"):
        session.set_defaults(steps=3)


# ---------------------------------------------------------------- bad input leaves the session untouched
BAD_EDITS = {
    "wrong-size mask": (dict(mask=np.ones((8, 8), dtype=bool)), MaskError, "resize"),
    "empty mask": (dict(mask=np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)), MaskError, "empty"),
    "nan mask": (dict(mask=np.full((IMAGE_SIZE, IMAGE_SIZE), np.nan, dtype=np.float32)), MaskError, "NaN"),
    "box outside": (dict(mask=(100, 100, 120, 120)), MaskError, "outside"),
    "inverted box": (dict(mask=(10, 10, 5, 5)), MaskError, "x1 > x0"),
    "mask of wrong type": (dict(mask="everywhere"), MaskError, "PIL image"),
    "too long prompt": (dict(prompt=" ".join(["red"] * (MAX_TOKENS + 4))), ValueError, "tokens long"),
    "bad steps": (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
    "bad scheduler": (dict(scheduler="magic"), ValueError, "scheduler"),
    "bad preserve": (dict(preserve="both"), ValueError, "preserve"),
    "negative seed": (dict(seed=-1), ValueError, "seed"),
    "float seed": (dict(seed=1.5), TypeError, "seed"),
    "nan guidance": (dict(guidance_scale=float("nan")), ValueError, "guidance_scale"),
}


@pytest.mark.parametrize("case", list(BAD_EDITS), ids=list(BAD_EDITS))
def test_bad_edit_input_is_a_clear_error_and_changes_nothing(session, case):
    session.edit(*EDITS[0])
    kwargs, error, message = BAD_EDITS[case]
    call = {"prompt": "a red star", "mask": (0, 0, 10, 10), **kwargs}
    before = state_of(session)
    with pytest.raises(error, match=message):
        session.edit(call.pop("prompt"), call.pop("mask"), **call)
    assert_same_state(before, state_of(session))


def test_an_all_white_mask_repaints_everything_with_a_warning(session):
    with pytest.warns(UserWarning, match="whole image"):
        session.edit("a red star", np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool))
    assert session.layers[-1].info["region_pixels"] == IMAGE_SIZE * IMAGE_SIZE


def test_edit_before_a_background_is_a_clear_error(shared_pipeline, model_dir):
    empty = _session(shared_pipeline, model_dir)
    with pytest.raises(MemoryStateError, match="no background"):
        empty.edit("a red star", (0, 0, 8, 8))
    with pytest.raises(MemoryStateError):
        empty.undo()


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "I;16", "1"])
def test_non_rgb_photos_are_converted(shared_pipeline, model_dir, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    photo = rgb.convert("RGBA") if mode != "I;16" else rgb.convert("L").convert("I;16")
    if mode not in ("RGBA", "I;16"):
        photo = rgb.convert(mode)
    session = _session(shared_pipeline, model_dir)
    session.start_from_image(photo, "a sea background", seed=5)
    assert session.size == (IMAGE_SIZE, IMAGE_SIZE)
    assert len(session.layers[0].trajectory) == STEPS and session.layers[0].info["source"] == "photo"
    session.edit("a red star", (4, 4, 16, 16))
    outside = ~masks.box_mask((4, 4, 16, 16), session.size)
    assert np.array_equal(np.asarray(session.image)[outside], np.asarray(session.layers[0].image)[outside])


def test_a_tampered_project_is_refused_and_the_session_keeps_its_state(session, tmp_path, shared_pipeline):
    path = tmp_path / "project"
    session.save(path)
    manifest = path / "project.json"
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 99'))
    before = state_of(session)
    with pytest.raises(ProjectError, match="newer"):
        Session.load(path, pipeline=shared_pipeline)
    (tmp_path / "junk.lep").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ProjectError):
        Session.load(tmp_path / "junk.lep", pipeline=shared_pipeline)
    assert_same_state(before, state_of(session))


def test_renoise_baseline_ignores_the_memory(session):
    """The blended-latent baseline re-encodes the previous image; tampering with memory cannot reach it."""
    box = (4, 4, 20, 20)
    memory_edit = np.asarray(session.edit("a red star", box)).copy()
    session.undo()
    baseline = np.asarray(session.edit("a red star", box, background="renoise")).copy()
    assert session.layers[-1].info["bcg"] == "renoise-image"
    assert not np.array_equal(memory_edit, baseline)
    outside = ~masks.box_mask(box, session.size)
    assert np.array_equal(baseline[outside], np.asarray(session.layers[0].image)[outside])
