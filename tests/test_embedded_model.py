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
# The gate (80% colour in the box). The committed weights measure 100% on these 12 and on the
# 100 held-out edits of `python -m training evaluate` (assets/embedded/MODEL_CARD.md).
MIN_COLOUR_RATE = 0.8
# Text-to-image: 12 held-out single-object captions, colour anywhere in the image (gate 90%; measured in the card).
T2I_SEEDS = range(12)
MIN_T2I_COLOUR_RATE = 0.9


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


def test_text_to_image_draws_the_requested_colour_at_the_measured_rate(session):
    found = 0
    for seed, (prompt, colour, shape, _) in zip(T2I_SEEDS, heldout_prompts(len(T2I_SEEDS))):
        session.generate(prompt, seed=seed)
        found += detect(np.asarray(session.image), (0, 0, 64, 64), colour, shape).colour_found
    assert found / len(T2I_SEEDS) >= MIN_T2I_COLOUR_RATE


def test_requested_colour_appears_inside_the_box_at_the_measured_rate(session):
    found = 0
    for seed in EDIT_SEEDS:
        background, colour, shape, box = heldout_edit(seed)
        session.generate(f"a {background} background", seed=seed)
        session.edit(sw.object_prompt(colour, shape), box)
        found += detect(np.asarray(session.image), box, colour, shape).colour_found
    assert found / len(EDIT_SEEDS) >= MIN_COLOUR_RATE
