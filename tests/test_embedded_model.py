"""The shipped embedded model: it loads offline, its files fit the limits, and edits through Session work.

Marked slow: these run the real model (CI runs them; `-m "not slow"` skips them locally).
"""

from __future__ import annotations

import numpy as np
import pytest

from benchmark import shapes_world as sw
from benchmark.detector import detect
from editor import Session
from pipelines import EMBEDDED_MODEL_DIR, masks
from training.evaluate import heldout_edit, heldout_prompts

pytestmark = pytest.mark.slow

# Fixed before looking at any result: 12 held-out edits, boxes of at least 1/9 of the image.
EDIT_SEEDS = range(12)
# The gate: the requested object (colour and shape) inside the box in 80% of edits. The committed
# weights measure 12/12 on these and 95% of the 100 held-out edits of `python -m training evaluate`
# (assets/embedded/MODEL_CARD.md).
MIN_OBJECT_RATE = 0.8
# Text-to-image: 12 held-out single-object captions, anywhere in the image; gates 90% colour, 80% shape.
# Measured on these 12: colour 12/12, shape 10/12 (200 captions: 99.5% and 88.5%, in the card).
T2I_SEEDS = range(12)
MIN_T2I_COLOUR_RATE = 0.9
MIN_T2I_SHAPE_RATE = 0.8


@pytest.fixture(scope="module")
def session():
    return Session.from_pretrained()


def test_every_weights_file_is_safetensors_under_16_mib():
    weights = [p for p in EMBEDDED_MODEL_DIR.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert all(p.stat().st_size < 16 * 2**20 for p in weights)


def test_generate_then_edit_keeps_every_pixel_outside_the_mask(session):
    session.generate("a grass background", seed=1)
    background = np.asarray(session.image).copy()
    box = (8, 8, 40, 40)
    session.edit("a red star", box)
    outside = ~masks.box_mask(box, session.size)
    assert session.size == (64, 64)
    assert np.array_equal(np.asarray(session.image)[outside], background[outside])
    assert not np.array_equal(np.asarray(session.image), background)


def test_text_to_image_draws_the_requested_object_at_the_measured_rate(session):
    colour_found = shape_found = 0
    for seed, (prompt, colour, shape, _) in zip(T2I_SEEDS, heldout_prompts(len(T2I_SEEDS))):
        session.generate(prompt, seed=seed)
        verdict = detect(np.asarray(session.image), (0, 0, 64, 64), colour, shape)
        colour_found += verdict.colour_found
        shape_found += verdict.shape_found
    assert colour_found / len(T2I_SEEDS) >= MIN_T2I_COLOUR_RATE
    assert shape_found / len(T2I_SEEDS) >= MIN_T2I_SHAPE_RATE


def test_requested_object_appears_inside_the_box_at_the_measured_rate(session):
    found = 0
    for seed in EDIT_SEEDS:
        background, colour, shape, box = heldout_edit(seed)
        session.generate(f"a {background} background", seed=seed)
        session.edit(sw.object_prompt(colour, shape), box)
        found += detect(np.asarray(session.image), box, colour, shape).shape_found  # colour and shape
    assert found / len(EDIT_SEEDS) >= MIN_OBJECT_RATE


# Rough boxes (benchmark.rough_masks: 1/4-0.45 of the image), 12 held-out edits fixed before looking at results.
# Issue 17's gate: the background inside the rough box, away from the object, comes back at a median >= 32 dB
# with tight edits (whole-mask repaint fails it: see benchmark/results/rough-masks), and the object is still drawn.
ROUGH_EDITS = range(12)
MIN_BACKGROUND_IN_MASK_DB = 32.0


def test_a_rough_box_gives_a_tight_edit_that_keeps_the_background_inside_it(session):
    from benchmark import metrics
    from benchmark.detector import object_mask
    from benchmark.rough_masks import held_out_edit

    psnrs, found = [], 0
    for index in ROUGH_EDITS:
        background, colour, shape, box = held_out_edit(index, 64)
        session.generate(f"a {background} background", seed=index)
        before = np.asarray(session.image).copy()
        session.edit(sw.object_prompt(colour, shape), box)
        after = np.asarray(session.image)
        rough = masks.box_mask(box, session.size)
        assert np.array_equal(after[~rough], before[~rough])
        psnrs.append(metrics.background_in_mask_psnr(before, after, rough, object_mask(after, box, colour)))
        found += detect(after, box, colour, shape).shape_found
    assert np.median(psnrs) >= MIN_BACKGROUND_IN_MASK_DB
    assert found / len(ROUGH_EDITS) >= MIN_OBJECT_RATE


# The shipped guidance adapters (assets/embedded/guidance and /fast, issue 15) on the same 12 held-out edits, each on
# a 20-step CFG background: distilled runs its 20 steps in one pass each, fast its own 4 steps, which follow the
# background's memory at their own noise levels. Both keep every pixel outside the mask, undo exactly and draw the
# object at the rate `python -m benchmark.guidance_modes` measures (the gates below are under those rates).
MIN_ADAPTER_OBJECT_RATE = {"distilled": 0.5, "fast": 0.5}  # benchmark: 68.6% and 68.0% of 344 edits


@pytest.mark.parametrize("mode", ["distilled", "fast"])
def test_adapter_edits_on_a_cfg_background_keep_the_rest_and_draw_the_object(session, mode):
    assert session.pipeline.fast_steps == 4 and session.pipeline.has_guidance_adapter
    steps, passes = {"distilled": (20, 20), "fast": (4, 4)}[mode]
    found = 0
    for seed in EDIT_SEEDS:
        background, colour, shape, box = heldout_edit(seed)
        session.generate(f"a {background} background", seed=seed)
        before = np.asarray(session.image).copy()
        session.edit(sw.object_prompt(colour, shape), box, guidance=mode)
        layer = session.layers[-1]
        assert (layer.info["bcg"], layer.info["unet_evals"], layer.settings["num_inference_steps"]) == (
            "memory", passes, steps)
        outside = ~masks.box_mask(box, session.size)
        assert np.array_equal(np.asarray(session.image)[outside], before[outside])
        found += detect(np.asarray(session.image), box, colour, shape).shape_found
        session.undo()
        assert np.array_equal(np.asarray(session.image), before)
    assert found / len(EDIT_SEEDS) >= MIN_ADAPTER_OBJECT_RATE[mode]
