"""SD3 and FLUX keep the editor's promises: tiny random components built from configs, nothing downloaded.

The properties every family's tests assert (bit-identical background after five edits, exact undo/redo,
save -> load -> edit, re-editing layer 1 of 4), plus what is particular to joint attention and flow matching:
MQD measured inside the joint processor of a real edit, T5 padding trimmed and masked, FLUX-dev's own guidance
embedding as guidance="distilled", the packed latents and shifted sigmas behind the same memory.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from session_properties import (check_reediting_layer_1_regenerating_the_layers_above_replays_exactly,
                                check_save_load_then_edit_matches, check_undo_then_redo_is_bit_identical)
from session_properties import union_of as union_in
from tiny_mmdit import MMDIT_PIPELINES, tiny_flux_pipeline

import pipelines.joint_attention as joint
from editor import EditSettings, Session
from memory import ProjectError
from pipelines import flow_matching, masks
from pipelines.families import UnsupportedModelError, check_model_index
from pipelines.mmdit_families import Flux, StableDiffusion3

STEPS = 4
SIZE = (32, 32)
EDITS = [
    ("a red star", (2, 2, 14, 14)),
    ("a blue circle", (18, 4, 30, 16)),
    ("a white moon", (6, 18, 20, 30)),
    ("a yellow heart", (10, 10, 24, 22)),
    ("a green tree", (22, 20, 31, 31)),
]
# The tiny random transformers barely respond to their prompts, so the tight mask would find no object: these
# tests repaint the whole mask (BCG, memory and MQD are what they check; tight edits have their own tests).
SETTINGS = dict(num_inference_steps=STEPS, mask_fit="whole")


@pytest.fixture(scope="module", params=sorted(MMDIT_PIPELINES))
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(family, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"tiny-{family}")
    MMDIT_PIPELINES[family]().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline(model_dir):
    return Session.from_pretrained(model_dir, device="cpu").pipeline


@pytest.fixture
def session(pipeline, model_dir):
    session = Session(pipeline, model=str(model_dir), defaults=EditSettings(**SETTINGS))
    session.generate("a grass background", seed=11)
    return session


def union_of(boxes) -> np.ndarray:
    return union_in(boxes, SIZE)


# ---------------------------------------------------------------- the family and its defaults
def test_the_family_is_read_from_the_folder_and_brings_its_own_defaults(family, model_dir, pipeline):
    check_model_index(model_dir)
    assert type(pipeline.family) is {"sd3": StableDiffusion3, "flux": Flux}[family]
    assert pipeline.default_size == SIZE
    defaults = Session(pipeline).defaults
    assert defaults.scheduler == "flow-euler" and defaults.num_inference_steps == 28
    assert (defaults.guidance, defaults.guidance_scale) == (("distilled", 3.5) if family == "flux" else ("cfg", 7.0))
    kept = Session(pipeline, defaults=EditSettings(num_inference_steps=3, guidance_scale=2.0)).defaults
    assert (kept.num_inference_steps, kept.guidance_scale) == (3, 2.0), "settings the caller chose stay"
    with pytest.raises(ValueError, match="samples with .*flow-euler"):
        Session(pipeline).generate("a grass background", scheduler="ddim", num_inference_steps=2)
    with pytest.raises(ValueError, match="multiples of 4"):
        pipeline("a grass background", height=30, width=32, scheduler="flow-euler", num_inference_steps=1)


def test_flux_schnell_runs_without_guidance_and_dev_refuses_cfg():
    schnell = Session(tiny_flux_pipeline(guidance_embeds=False))
    assert schnell.defaults.num_inference_steps == 4 and schnell.defaults.guidance_scale == 0.0
    schnell.generate("a grass background", seed=1)
    assert schnell.layers[0].info["guidance"] == "off" and schnell.layers[0].info["unet_evals"] == 4
    dev = Session(tiny_flux_pipeline(), defaults=EditSettings(num_inference_steps=2))
    with pytest.raises(ValueError, match="embeds its guidance scale"):
        dev.generate("a grass background", guidance="cfg", guidance_scale=3.0)


# ---------------------------------------------------------------- the properties every family keeps
def test_background_is_bit_identical_after_five_edits(session):
    background = np.asarray(session.image).copy()
    for prompt, box in EDITS:
        before = np.asarray(session.image).copy()
        session.edit(prompt, box)
        assert not np.array_equal(np.asarray(session.image), before), "an edit must change something"
    outside = ~union_of([box for _, box in EDITS])
    np.testing.assert_array_equal(np.asarray(session.image)[outside], background[outside])
    assert [layer.info["attention_regions"] for layer in session.layers[1:]] == [2, 3, 4, 5, 6]
    assert all(layer.info["bcg"] == "memory" for layer in session.layers[1:])


def test_undo_then_redo_returns_bit_identical_images(session):
    check_undo_then_redo_is_bit_identical(session, EDITS)


def test_save_load_then_edit_matches_editing_without_save(session, tmp_path):
    reloaded = check_save_load_then_edit_matches(session, EDITS, tmp_path / "project.lep")
    assert reloaded.pipeline.family.name == session.pipeline.family.name



def test_a_project_is_refused_by_the_other_joint_family(session, family, tmp_path):
    session.save(tmp_path / "project.lep")
    other = MMDIT_PIPELINES["flux" if family == "sd3" else "sd3"]()
    with pytest.raises(ProjectError, match=f"made with a .*{family}.* model"):
        Session.load(tmp_path / "project.lep", pipeline=other)


BOXES = [(0, 0, 14, 14), (16, 2, 30, 16), (4, 16, 18, 30), (18, 18, 31, 31)]
PROMPTS = ["a red star", "a blue circle", "a white moon", "a yellow heart"]


def test_reediting_layer_1_of_4_replays_exactly_and_undo_restores(session):
    for prompt, box in zip(PROMPTS, BOXES):
        session.edit(prompt, box)
    check_reediting_layer_1_regenerating_the_layers_above_replays_exactly(session, BOXES, PROMPTS[0], SIZE)


def test_start_from_a_photo_follows_the_flow_matching_trajectory(pipeline, model_dir):
    photo = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    session = Session(pipeline, model=str(model_dir), defaults=EditSettings(**SETTINGS))
    session.start_from_image(photo, "a sea background", seed=5)
    assert session.layers[0].schedule[0] == "FlowMatchEulerDiscreteScheduler"
    session.edit("a red star", (4, 4, 16, 16))
    outside = ~masks.box_mask((4, 4, 16, 16), SIZE)
    np.testing.assert_array_equal(np.asarray(session.image)[outside], np.asarray(session.layers[0].image)[outside])
    assert session.layers[1].info["bcg"] == "memory"


def test_another_step_count_falls_back_to_the_renoised_flow_latent(session):
    session.edit("a red star", (4, 4, 16, 16), num_inference_steps=STEPS + 1)
    assert session.layers[1].info["bcg"] == "renoise"
    outside = ~masks.box_mask((4, 4, 16, 16), SIZE)
    np.testing.assert_array_equal(np.asarray(session.image)[outside], np.asarray(session.layers[0].image)[outside])


# ---------------------------------------------------------------- MQD inside a real edit
def test_mqd_weights_measured_inside_the_joint_processor_of_an_edit(session, family, monkeypatch):
    session.edit("a blue circle", (0, 0, 16, 32))
    calls, real_sdpa = [], joint.F.scaled_dot_product_attention
    seen_regions, pending = [], []
    real_allowed = joint.JointProcessorBase.allowed

    def allowed(processor, rows, device):  # the fused call asks for its mask right before attending
        seen_regions.append(processor.regions)
        pending.append(True)
        return real_allowed(processor, rows, device)

    def sdpa(query, key, value, attn_mask=None, **kwargs):
        if pending:
            pending.clear()
            calls.append((query, key, attn_mask))
        return real_sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(joint.JointProcessorBase, "allowed", allowed)
    monkeypatch.setattr(joint.JointProcessorBase, "split_softmax", False)  # the fused call, whose mask is read
    monkeypatch.setattr(joint.F, "scaled_dot_product_attention", sdpa)
    session.edit("a red star with a white moon", (8, 8, 24, 24))  # longer: the other prompts keep padding
    monkeypatch.undo()

    routed = [(query, key, mask) for query, key, mask in calls if mask is not None]
    plain = [(query, key) for query, key, mask in calls if mask is None]
    regions = [r for r in seen_regions if r.maps.count > 1][-1]
    assert regions.maps.count == 3 and regions.plain_rows == ()
    blocks = 3 if family == "sd3" else 4
    assert len(routed) == blocks * STEPS, "one fused call per joint block per step"
    if family == "sd3":  # CFG's unconditional row in a call of its own: one null-prompt copy, no mask
        assert len(plain) == blocks * STEPS and all(query.shape[0] == 1 for query, _, _ in routed)
        assert all(key.shape[2] < routed[0][1].shape[2] - regions.maps.tokens for _, key in plain)
    else:
        assert not plain
    calls = routed
    text_first = family == "flux"
    tokens, count = regions.maps.tokens, regions.maps.count
    assert tokens < {"sd3": 16 + 16, "flux": 16}[family], "the padding every prompt has was cut off"
    text_owner = torch.arange(count).repeat_interleave(tokens)
    owners = regions.image_owners()
    is_text = torch.cat([torch.ones(len(text_owner), dtype=torch.bool), torch.zeros(len(owners), dtype=torch.bool)])
    region = torch.cat([text_owner, owners])
    real = torch.zeros_like(is_text)
    real[is_text] = regions.text_mask[-1]
    if not text_first:
        order = torch.cat([torch.arange(len(text_owner), len(region)), torch.arange(len(text_owner))])
        is_text, region, real = is_text[order], region[order], real[order]
    assert (is_text & ~real).any(), "some prompt keeps padding the test must see"
    for query, key, mask in calls:
        weights = (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).masked_fill(~mask, float("-inf"))
        cond = weights.softmax(-1)[-1]  # the conditional row
        for r in range(count):
            images = ~is_text & (region == r)
            assert images.any()
            rows = cond[:, images]
            assert torch.all(rows[..., is_text & ~(real & (region == r))] == 0), "another prompt or padding"
            assert torch.all(rows[..., is_text & real & (region == r)].sum(-1) > 0)


def test_processors_come_back_after_an_edit_that_raises(session):
    transformer = session.pipeline.denoiser
    originals = dict(transformer.attn_processors)
    layers = session.layers

    def fail(pipe, step, timestep, tensors):
        assert any(isinstance(p, joint.JointProcessorBase) for p in pipe.denoiser.attn_processors.values())
        raise RuntimeError("simulated failure mid-edit")

    with pytest.raises(RuntimeError, match="simulated"):
        session.edit("a blue circle", (10, 10, 30, 30), callback_on_step_end=fail)
    assert dict(transformer.attn_processors) == originals and session.layers == layers


def test_flux_packs_inside_predict_and_the_memory_keeps_the_latent_grid():
    pipeline = tiny_flux_pipeline()
    session = Session(pipeline, defaults=EditSettings(**SETTINGS))
    session.generate("a grass background", seed=2)
    latent = session.layers[0].trajectory[-1]
    assert latent.shape == (1, 4, 16, 16)  # the latent grid: BCG, tight masks and the memory work on it
    assert torch.equal(flow_matching.unpack(flow_matching.pack(latent), (16, 16)), latent)


def test_guidance_scale_reaches_flux_dev_as_its_embedding(monkeypatch):
    pipeline = tiny_flux_pipeline()
    seen = []
    forward = pipeline.transformer.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["guidance"])
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipeline.transformer, "forward", spy)
    Session(pipeline, defaults=EditSettings(num_inference_steps=2)).generate("a grass background", guidance_scale=4.5)
    assert [g.tolist() for g in seen] == [[4.5], [4.5]]


def test_a_joint_folder_without_its_t5_is_a_clear_error(tmp_path):
    components = tiny_flux_pipeline().components
    with pytest.raises(UnsupportedModelError, match="text_encoder_2"):
        type(tiny_flux_pipeline())(**{**components, "text_encoder_2": None})
    folder = tmp_path / "flux"
    tiny_flux_pipeline().save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "FluxTransformer2DModel"]


def test_a_guidance_adapter_on_a_joint_family_is_a_clear_error(tmp_path):
    from pipelines.guidance_format import add_guidance_projection

    with pytest.raises(UnsupportedModelError, match="FLUX-dev embeds its own guidance"):
        add_guidance_projection(tiny_flux_pipeline().transformer)


def test_the_ui_starts_on_flux_with_its_own_settings_and_paints(tmp_path):
    from gradio_client import Client
    from PIL import Image

    from ui import app, controls

    pipeline = tiny_flux_pipeline()
    assert controls.guidance_choices(pipeline) == ["distilled"]
    assert controls.scheduler_choices(pipeline) == ["flow-euler"]
    demo = app.build_app(pipeline, model="tiny-flux")
    _, url, _ = app.launch_app(demo, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        defaults = EditSettings().for_family(pipeline.family.default_settings)
        values = {name: getattr(defaults, name) for name in controls.SETTING_CONTROLS}
        values["num_inference_steps"] = 2
        result = Client(url, verbose=False).predict(prompt="a grass background", seed_mode="fixed", seed=1,
                                                    **values, api_name="/generate")
        assert Image.open(result[0]).size == SIZE
        status = next(value for value in result if isinstance(value, str) and value.startswith("Painted"))
        assert "distilled: " in status and "2 transformer passes." in status
    finally:
        demo.close()
    # Costs are counted in the model's own denoiser passes: a transformer here, not a UNet.
    assert controls.guidance_labels(pipeline, 20, 3.5) == [("distilled · 20 transformer passes", "distilled")]


def test_the_benchmark_runs_on_a_tiny_flux_folder(tmp_path):
    from benchmark.cli import main as bench_main

    folder = tmp_path / "flux"
    tiny_flux_pipeline().save_pretrained(folder)
    out = tmp_path / "bench"
    status = bench_main(["--suite", "multiedit", "--limit", "1", "--methods", "mqd,full", "--model", str(folder),
                         "--steps", "2", "--device", "cpu", "--out", str(out)])
    assert status == 0
    run = json.loads((out / "run.json").read_text())
    results = json.loads((out / "scenes" / run["plans"][0]["name"] / "full.json").read_text())
    assert results["status"] == "ok" and results["edits"] and results["background"]["unet_evals"] == 2


def test_cfg_rows_apart_equal_the_batched_call_with_plain_rows(pipeline):
    """CFG's unconditional row runs in a call of its own with one null-prompt copy (PlainRowsApart): the same
    attention as the batched call where it carries a copy per region, idle but for the first."""
    from pipelines.attention import RegionMaps
    from pipelines.text_conditioning import TextConditioning

    family = pipeline.family
    prompts = [family.encode_prompt([p]) for p in ("a red star", "a white moon on a night background", "a cat")]
    null = family.encode_prompt([""])
    text = family.prepare_text(TextConditioning.batch([null.repeat_tokens(3), TextConditioning.regions(prompts)]), 3)
    latent = (SIZE[1] // 8, SIZE[0] // 8)
    region_masks = [np.ones(SIZE[::-1], bool), np.zeros(SIZE[::-1], bool), np.zeros(SIZE[::-1], bool)]
    region_masks[1][:16, :16] = True
    region_masks[2][8:24, 8:24] = True
    maps = RegionMaps.from_masks(region_masks, text.tokens // 3, latent, family.token_grids(latent))
    latents = torch.randn(2, pipeline.latent_channels, *latent, generator=torch.Generator().manual_seed(0))
    grid = next(iter(family.token_grids(latent).values()))
    with torch.no_grad():
        with family.attention_routing(maps, text, None, (0,)):
            apart = family.predict(latents, 500, text)
        with joint.joint_regional_attention(family.denoiser, joint.JointRegions(maps, grid, text.attention_mask, (0,))):
            batched = family.predict_rows(latents, 500, text)
    assert getattr(family, "_apart") is None
    torch.testing.assert_close(apart, batched, rtol=1e-5, atol=1e-5)
