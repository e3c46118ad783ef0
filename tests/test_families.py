"""Every model family keeps the editor's promises: SDXL and PixArt-α on tiny random components built from configs.

The same properties the SD tests assert (bit-identical background, exact undo/redo, save/load, re-editing a layer
under a stack, MQD routing measured inside the processor, processors restored after a failure), plus what is
particular to each family: T5 padding never attended, SDXL's global pooled/size conditioning, PixArt's
resolution conditioning and learned-sigma output.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gradio_client import Client
from PIL import Image
from tiny_families import (
    save_tiny_family,
    sentencepiece_tokenizer_folder,
    tiny_family_pipeline,
    tiny_pixart_pipeline,
)
from session_properties import (check_reediting_layer_1_regenerating_the_layers_above_replays_exactly,
                                check_save_load_then_edit_matches, check_undo_then_redo_is_bit_identical)
from session_properties import union_of as union_in
from tiny_models import IMAGE_SIZE, tiny_pipeline
from transformers import T5Tokenizer

import pipelines.attention as attention_module
from benchmark.cli import main as bench_main
from editor import EditSettings, Session
from memory import ProjectError
from pipelines import TextConditioning, UnsupportedModelError, masks
from pipelines.guidance import load_guidance_adapter
from pipelines.attention import (
    RegionalAttnProcessor,
    RegionLoopAttnProcessor,
    RegionMaps,
)
from pipelines.families import (
    PixArtAlpha,
    StableDiffusion,
    StableDiffusionXL,
    check_model_index,
)
from pipelines.guidance_format import EMBEDDING_DIM, attach_guidance_adapter, read_guidance_config
from training.distill import DistillConfig, distill, list_prompts, student_output
from training.distill.data import encode_prompts
from training.__main__ import main as training_main
from ui import app
from ui.controls import SETTING_CONTROLS

STEPS = 4
SIZE = (IMAGE_SIZE, IMAGE_SIZE)
EDITS = [
    ("a red star", (2, 2, 14, 14)),
    ("a blue circle", (18, 4, 30, 16)),
    ("a white moon", (6, 18, 20, 30)),
    ("a yellow heart", (10, 10, 24, 22)),
    ("a green tree", (22, 20, 31, 31)),
]
NEW_FAMILIES = ("sdxl", "pixart")
FAMILY_CLASSES = {"sd": StableDiffusion, "sdxl": StableDiffusionXL, "pixart": PixArtAlpha}


@pytest.fixture(scope="module", params=NEW_FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="module")
def model_dir(family, tmp_path_factory):
    return save_tiny_family(tmp_path_factory.mktemp(f"tiny-{family}"), family)


@pytest.fixture(scope="module")
def pipeline(model_dir):
    return Session.from_pretrained(model_dir, device="cpu").pipeline


def new_session(pipeline, model_dir, **settings) -> Session:
    session = Session(pipeline, model=str(model_dir), defaults=EditSettings(num_inference_steps=STEPS, **settings))
    session.generate("a grass background", seed=11)
    return session


@pytest.fixture
def session(pipeline, model_dir):
    return new_session(pipeline, model_dir)


def union_of(boxes) -> np.ndarray:
    return union_in(boxes, SIZE)


# ---------------------------------------------------------------- the family is read from the folder
PUBLISHED_INDEX = {  # what the published folders' model_index.json add to the components
    "sd": {"_class_name": "StableDiffusionPipeline", "safety_checker": [None, None],
           "feature_extractor": [None, None], "requires_safety_checker": False},
    "sdxl": {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True,
             "feature_extractor": [None, None], "image_encoder": [None, None]},
    "pixart": {"_class_name": "PixArtAlphaPipeline"},
}


@pytest.mark.parametrize("name", ["sd", "sdxl", "pixart"])
def test_the_family_is_read_from_the_components(name, tmp_path):
    folder = save_tiny_family(tmp_path / name, name)
    index = json.loads((folder / "model_index.json").read_text())
    index = {key: value for key, value in index.items() if value != [None, None]}  # as published: no empty slots
    (folder / "model_index.json").write_text(json.dumps({**index, **PUBLISHED_INDEX[name]}))
    check_model_index(folder)
    pipeline = Session.from_pretrained(folder, device="cpu").pipeline
    assert type(pipeline.family) is FAMILY_CLASSES[name]
    assert pipeline.default_size == SIZE


def test_a_pixart_folder_with_a_sentencepiece_tokenizer_loads_as_published(tmp_path):
    """PixArt-α's folder holds T5's tokenizer as spiece.model only (the `pixart` extra reads it)."""
    published = sentencepiece_tokenizer_folder(tmp_path / "spm")
    folder = tmp_path / "pixart"
    tiny_pixart_pipeline(tokenizer=T5Tokenizer.from_pretrained(published)).save_pretrained(folder)
    shutil.rmtree(folder / "tokenizer")
    shutil.copytree(published, folder / "tokenizer")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "tokenizer": ["transformers", "T5Tokenizer"]}))
    pipeline = Session.from_pretrained(folder, device="cpu").pipeline
    text = pipeline.encode_prompt("a red star")
    assert type(pipeline.family) is PixArtAlpha and text.tokens == 16
    assert text.attention_mask[0].tolist() == [True] * pipeline.family.prompt_token_count("a red star") + [False] * (
        16 - pipeline.family.prompt_token_count("a red star"))


def test_a_folder_of_an_unsupported_family_is_refused_before_loading(tmp_path):
    folder = save_tiny_family(tmp_path / "sana", "pixart")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name="SanaPipeline", transformer=["diffusers", "SanaTransformer2DModel"])
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UnsupportedModelError, match="SanaTransformer2DModel.*supported: Stable Diffusion 1/2.*FLUX"):
        Session.from_pretrained(folder, device="cpu")


def test_an_sdxl_refiner_is_a_clear_error():
    components = tiny_family_pipeline("sdxl").components
    with pytest.raises(UnsupportedModelError, match="refiner"):
        type(tiny_family_pipeline("sd"))(**{**components, "text_encoder": None, "tokenizer": None})


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


def test_undo_then_redo_returns_bit_identical_images(session):
    check_undo_then_redo_is_bit_identical(session, EDITS)


def test_save_load_then_edit_matches_editing_without_save(session, tmp_path):
    reloaded = check_save_load_then_edit_matches(session, EDITS, tmp_path / "project.lep")
    assert reloaded.pipeline.family.name == session.pipeline.family.name



def test_a_project_is_refused_by_a_model_of_another_family_or_checkpoint(session, family, tmp_path):
    session.save(tmp_path / "project.lep")
    other_family = "pixart" if family == "sdxl" else "sdxl"
    with pytest.raises(ProjectError, match=f"made with a .*{session.pipeline.family.name}.* model"):
        Session.load(tmp_path / "project.lep", pipeline=tiny_family_pipeline(other_family))
    with pytest.raises(ProjectError, match="another checkpoint of the same architecture"):
        Session.load(tmp_path / "project.lep", pipeline=tiny_family_pipeline(family, seed=1))


BOXES = [(0, 0, 14, 14), (16, 2, 30, 16), (4, 16, 18, 30), (18, 18, 31, 31)]
PROMPTS = ["a red star", "a blue circle", "a white moon", "a yellow heart"]


@pytest.fixture
def four_layers(session):
    for prompt, box in zip(PROMPTS, BOXES):
        session.edit(prompt, box)
    return session


def test_reediting_layer_1_of_4_keeps_the_layers_above_and_undo_restores_exactly(four_layers):
    session = four_layers
    before, before_image = session.layers, np.asarray(session.image).copy()
    session.replace(1, prompt="a green tree", seed=42)  # layers_above="keep", the default
    for old, new in zip(before[2:], session.layers[2:]):
        assert new.info.get("restacked") and new.prompt == old.prompt
        own = np.asarray(old.mask) == 1.0
        np.testing.assert_array_equal(np.asarray(new.image)[own], np.asarray(old.image)[own])
    outside = ~masks.box_mask(BOXES[0], SIZE)  # the re-edit of layer 1 cannot reach further
    np.testing.assert_array_equal(np.asarray(session.image)[outside], before_image[outside])
    session.undo()
    assert session.layers == before
    np.testing.assert_array_equal(np.asarray(session.image), before_image)


def test_reediting_layer_1_of_4_regenerating_the_layers_above_replays_exactly(four_layers):
    check_reediting_layer_1_regenerating_the_layers_above_replays_exactly(four_layers, BOXES, PROMPTS[0], SIZE)


def test_tight_edits_find_the_object_inside_a_rough_mask(session):
    before = np.asarray(session.image).copy()
    session.edit("a red star", (4, 4, 28, 28))
    layer, rough = session.layers[1], masks.box_mask((4, 4, 28, 28), SIZE)
    assert layer.info["mask_fit"] == "tight" and 0 < np.count_nonzero(layer.mask) < rough.sum()
    assert (layer.mask[~rough] == 0).all()
    untouched = layer.mask == 0
    np.testing.assert_array_equal(np.asarray(session.image)[untouched], before[untouched])


def test_start_from_a_photo_then_edit(pipeline, model_dir):
    photo = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    session = Session(pipeline, model=str(model_dir), defaults=EditSettings(num_inference_steps=STEPS))
    session.start_from_image(photo, "a sea background", seed=5)
    session.edit("a red star", (4, 4, 16, 16))
    outside = ~masks.box_mask((4, 4, 16, 16), SIZE)
    np.testing.assert_array_equal(np.asarray(session.image)[outside], np.asarray(session.layers[0].image)[outside])
    assert session.layers[1].info["bcg"] == "memory"


# ---------------------------------------------------------------- MQD, measured inside the processor
def test_queries_put_zero_weight_on_other_regions_and_on_padding_tokens(session, family, monkeypatch):
    """The attention call the fused processor makes, rebuilt as weights over all regions' tokens: each query's
    weight lies on its own region's real tokens only (the bucket's keys are that region's, padding is masked)."""
    session.edit("a blue circle", (0, 0, 16, 32))
    region_prompts = ["a grass background", "a blue circle", "a red star"]
    calls, real_sdpa, real_attend = [], F.scaled_dot_product_attention, RegionalAttnProcessor.attend

    def attend(processor, query, key, value, bias=None):
        calls.append({"maps": processor.maps, "length": query.shape[2], "all_keys": key})
        return real_attend(processor, query, key, value, bias)

    def sdpa(query, key, value, attn_mask=None, **kwargs):
        if calls and "query" not in calls[-1]:  # the call the regional processor makes (F is torch's, shared)
            calls[-1].update(query=query, key=key, mask=attn_mask)
        return real_sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(RegionalAttnProcessor, "attend", attend)
    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", sdpa)
    session.edit("a red star", (8, 8, 24, 24))
    monkeypatch.undo()

    pipeline = session.pipeline
    valid = torch.cat([pipeline.encode_prompt(p).full_mask()[0] for p in region_prompts])  # [3 * L]
    negative = pipeline.encode_prompt("").full_mask()[0].repeat(3)
    if family == "pixart":
        assert not valid.all() and not negative.all(), "T5 prompts are padded: the test must see padding"
    tokens = pipeline.encode_prompt("").tokens
    key_owner = torch.arange(3).repeat_interleave(tokens)
    assert calls and {call["query"].shape[0] for call in calls} == {2}  # CFG: [uncond, cond]
    for call in calls:
        query, key, mask, all_keys = call["query"], call["key"], call["mask"], call["all_keys"]
        batch, heads, length = all_keys.shape[0], all_keys.shape[1], call["length"]
        regions, slots, position = call["maps"].buckets(length, torch.device("cpu"))
        for bucket, region in enumerate(regions.tolist()):  # a bucket's keys are its region's tokens, no other
            torch.testing.assert_close(key.view(batch, heads, len(regions), tokens, -1)[:, :, bucket],
                                       all_keys[:, :, region * tokens:(region + 1) * tokens], rtol=0, atol=0)
        scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
        scores = scores if mask is None else scores + mask
        per_query = scores.softmax(-1).view(batch, heads, -1, tokens)[:, :, position]  # [B, heads, Q, L]
        weights = torch.zeros(batch, heads, length, 3 * tokens)
        bucket_region = regions[position // slots.shape[1]]
        for region in range(3):
            chosen = bucket_region == region
            weights[:, :, chosen, region * tokens:(region + 1) * tokens] = per_query[:, :, chosen]
        owners = call["maps"].query_owners(length)
        for region in range(3):
            rows = weights[:, :, owners == region]
            assert rows.shape[2] > 0, f"region {region} has no queries on a {length}-token grid"
            own = key_owner == region
            assert torch.all(rows[1][..., ~(own & valid)] == 0), "cond: another region's token or padding"
            assert torch.all(rows[0][..., ~(own & negative)] == 0), "uncond: not the plain negative prompt"
            torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows.sum(-1)))


def test_the_fused_call_equals_the_per_region_loop_with_a_text_mask(pipeline):
    """Checked on each family's own cross-attention layers and token grids, with T5-style padding."""
    torch.manual_seed(0)
    regions = [np.ones((16, 16), bool), np.zeros((16, 16), bool), np.zeros((16, 16), bool)]
    regions[1][:, :8], regions[2][4:12, 4:12] = True, True
    maps = RegionMaps.from_masks(regions, 5, (16, 16), pipeline.family.token_grids((16, 16)))
    attention_layers = [module for name, module in pipeline.denoiser.named_modules() if name.endswith("attn2")]
    real = torch.tensor([[1, 1, 0, 0, 0] * 3, [1, 1, 1, 1, 0] * 3], dtype=torch.bool)
    bias = ((1 - real.float()) * -10000.0)[:, None]  # as diffusers hands a text mask to cross-attention
    for queries in maps.grids:
        attn = attention_layers[0]
        hidden = torch.randn(2, queries, attn.to_q.in_features)
        context = torch.randn(2, 15, attn.to_k.in_features)
        fused = RegionalAttnProcessor(maps)(attn, hidden, encoder_hidden_states=context, attention_mask=bias)
        loop = RegionLoopAttnProcessor(maps)(attn, hidden, encoder_hidden_states=context, attention_mask=bias)
        assert (fused - loop).abs().max().item() < 1e-5


def test_only_cross_attention_is_routed_and_processors_come_back_after_an_edit_that_raises(session):
    session.edit("a red star", (2, 2, 16, 16))
    denoiser = session.pipeline.denoiser
    originals = dict(denoiser.attn_processors)
    layers, image, seen = session.layers, np.asarray(session.image).copy(), {}

    def fail_midway(pipe, step, timestep, tensors):
        seen.update(pipe.denoiser.attn_processors)
        raise RuntimeError("simulated failure mid-edit")

    with pytest.raises(RuntimeError, match="simulated"):
        session.edit("a blue circle", (10, 10, 30, 30), callback_on_step_end=fail_midway)
    routed = {name for name, processor in seen.items() if isinstance(processor, RegionalAttnProcessor)}
    assert routed and routed == {name for name in originals if name.endswith("attn2.processor")}
    assert dict(denoiser.attn_processors) == originals
    assert session.layers == layers and np.array_equal(np.asarray(session.image), image)
    session.edit("a blue circle", (10, 10, 30, 30))
    assert len(session.layers) == len(layers) + 1


# ---------------------------------------------------------------- what is particular to each family
def denoiser_calls(pipeline, monkeypatch) -> list[dict]:
    calls, forward = [], pipeline.denoiser.forward

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return forward(*args, **kwargs)

    monkeypatch.setattr(pipeline.denoiser, "forward", spy)
    return calls


def test_sdxl_pooled_text_and_size_are_global_the_current_edits(tmp_path, monkeypatch):
    folder = save_tiny_family(tmp_path / "sdxl", "sdxl")
    session = new_session(Session.from_pretrained(folder, device="cpu").pipeline, folder)
    session.edit("a blue circle", (0, 0, 16, 32))
    calls = denoiser_calls(session.pipeline, monkeypatch)
    session.edit("a red star", (8, 8, 24, 24))  # MQD: three regions, their pooled embeddings all differ
    pooled = {p: session.pipeline.encode_prompt(p).pooled[0] for p in ("", "a red star", "a blue circle")}
    assert len(calls) == STEPS
    for kwargs in calls:
        added = kwargs["added_cond_kwargs"]
        torch.testing.assert_close(added["text_embeds"], torch.stack([pooled[""], pooled["a red star"]]))
        assert added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
        assert kwargs["encoder_hidden_states"].shape[1] == 3 * session.pipeline.tokenizer.model_max_length


def test_pixart_reads_its_resolution_the_t5_mask_and_the_mean_half_of_its_output(tmp_path, monkeypatch):
    folder = save_tiny_family(tmp_path / "pixart", "pixart")
    pipeline = Session.from_pretrained(folder, device="cpu").pipeline
    calls = denoiser_calls(pipeline, monkeypatch)
    text = TextConditioning.batch([pipeline.encode_prompt(""), pipeline.encode_prompt("a red star")])
    latents = torch.randn(2, 4, 16, 16)
    prediction = pipeline.family.predict(latents, torch.tensor(500), text)
    full = calls[0]
    assert prediction.shape == latents.shape and pipeline.denoiser.config.out_channels == 8
    assert full["added_cond_kwargs"]["resolution"].tolist() == [[32.0, 32.0]] * 2
    assert full["added_cond_kwargs"]["aspect_ratio"].tolist() == [[1.0]] * 2
    assert torch.equal(full["encoder_attention_mask"], text.attention_mask) and full["timestep"].tolist() == [500] * 2
    with torch.no_grad():
        everything = pipeline.denoiser(latents, **{k: v for k, v in full.items()}).sample
    torch.testing.assert_close(prediction, everything[:, :4])


def test_the_paper_preset_is_the_official_codes_settings():
    paper = EditSettings.preset("paper")
    assert (paper.scheduler, paper.num_inference_steps, paper.guidance_scale, paper.free_steps_ratio) == (
        "dpm++", 20, 7.5, 0.2)
    assert (paper.mask_fit, paper.mask_feather, paper.mask_dilation, paper.negative_prompt) == ("whole", 0, 0, "")
    assert (paper.bcg_mask, paper.routing) == ("binary", "erode-dilate")
    assert EditSettings.preset("default") == EditSettings()
    with pytest.raises(ValueError, match="unknown preset"):
        EditSettings.preset("fast")


# ---------------------------------------------------------------- distilled guidance on every family
def test_fast_mode_trains_and_edits_on_every_family(family, model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red star\na blue circle\n")
    training_main(["distill", "--mode", "fast", "--model", str(model_dir), "--out", str(tmp_path / "fast"),
                   "--steps", "1", "--rank", "4", "--fast-steps", "2", "--teacher-steps", "4", "--accumulate", "1",
                   "--prompts", str(tmp_path / "prompts.txt"), "--state", str(tmp_path / "state"), "--device", "cpu"])
    assert read_guidance_config(tmp_path / "fast")["mode"] == "fast"
    pipeline = Session.from_pretrained(model_dir, device="cpu", guidance_adapter=False).pipeline
    load_guidance_adapter(pipeline, tmp_path / "fast", "fast")
    session = new_session(pipeline, model_dir)
    before = np.asarray(session.image).copy()
    session.edit("a red star", (2, 2, 16, 16), guidance="fast")
    layer = session.layers[-1]
    assert (layer.info["guidance"], layer.info["unet_evals"], layer.settings["num_inference_steps"]) == ("fast", 2, 2)
    outside = ~masks.box_mask((2, 2, 16, 16), SIZE)
    np.testing.assert_array_equal(np.asarray(session.image)[outside], before[outside])
    session.undo()
    np.testing.assert_array_equal(np.asarray(session.image), before)


def test_distilled_guidance_trains_saves_and_loads_on_every_family(family, model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red star\na blue circle\n")
    training_main(["distill", "--model", str(model_dir), "--out", str(tmp_path / "guidance"), "--steps", "2",
                   "--batch-size", "2", "--rank", "4", "--lr", "0.01", "--prompts", str(tmp_path / "prompts.txt"),
                   "--state", str(tmp_path / "state"), "--device", "cpu"])
    meta = read_guidance_config(tmp_path / "guidance")
    assert meta["steps"] == 2 and meta["family"] == FAMILY_CLASSES[family].name

    # the live student, as training left it, against the same adapter loaded (fused) into a fresh pipeline
    student = Session.from_pretrained(model_dir, device="cpu", guidance_adapter=False).pipeline
    attach_guidance_adapter(student.denoiser, tmp_path / "guidance")

    loaded = Session.from_pretrained(model_dir, device="cpu", guidance_adapter=tmp_path / "guidance").pipeline
    plain = Session.from_pretrained(model_dir, device="cpu", guidance_adapter=False).pipeline
    latents, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 300])
    cond = encode_prompts(student, ["a red star", "a blue circle"])
    adapter = loaded.guidance_adapter
    with torch.no_grad():
        live = student_output(student.family, latents, t, cond, torch.full((2,), 4.0), EMBEDDING_DIM, meta["lora_gain"])
        with adapter.applied(4.0):  # the fused adapter of the loaded pipeline = the live student of training
            fused = loaded.family.predict(latents, t, loaded.family.unpack_text(cond),
                                          timestep_cond=adapter.embedding(4.0, 2, latents.device, latents.dtype))
        teacher = plain.family.predict(latents, t, plain.family.unpack_text(cond))
    torch.testing.assert_close(fused, live, rtol=1e-4, atol=1e-5)
    assert not torch.equal(fused, teacher), "training moved the student away from the teacher"

    sessions = [new_session(pipeline, model_dir) for pipeline in (loaded, plain)]
    for session in sessions:
        session.edit("a red star", (2, 2, 16, 16))
    np.testing.assert_array_equal(sessions[0].image, sessions[1].image)  # CFG is untouched by a loaded adapter
    sessions[0].edit("a blue circle", (14, 2, 30, 16), guidance="distilled")
    assert sessions[0].layers[-1].info["unet_evals"] == STEPS and sessions[0].layers[-1].info["guidance"] == "distilled"

    other = tiny_family_pipeline("pixart" if family == "sdxl" else "sdxl")
    with pytest.raises(ValueError, match=f"trained on a '{student.family.name}' model"):
        load_guidance_adapter(other, tmp_path / "guidance")


def test_a_checkpoint_that_cannot_take_an_adapter_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="inpainting UNet"):
        distill(tiny_pipeline(in_channels=9), tmp_path / "guidance", DistillConfig(steps=1),
              list_prompts(["a red star"]), progress=False)


# ---------------------------------------------------------------- the benchmark and the UI start on every family
def test_the_benchmark_runs_the_paper_preset_on_every_family(model_dir, tmp_path):
    out = tmp_path / "bench"
    status = bench_main(["--suite", "multiedit", "--limit", "1", "--methods", "mqd,full", "--model", str(model_dir),
                         "--preset", "paper", "--steps", "2", "--device", "cpu", "--out", str(out)])
    assert status == 0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["preset"] == "paper"
    settings = {method["name"]: method["settings"] for method in run["methods"]}
    assert settings["mqd"]["scheduler"] == "dpm++" and settings["mqd"]["free_steps_ratio"] == 0.2
    results = json.loads((out / "scenes" / run["plans"][0]["name"] / "full.json").read_text())
    assert results["status"] == "ok" and results["edits"] and results["background"]["unet_evals"] == 4
    assert "settings preset paper" in (out / "report.md").read_text()


def test_the_ui_starts_and_paints_on_every_family(pipeline, model_dir):
    demo = app.build_app(pipeline, model=str(model_dir))
    _, url, _ = app.launch_app(demo, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        values = {name: getattr(EditSettings(), name, "cfg") for name in SETTING_CONTROLS}
        values["num_inference_steps"] = 2
        result = Client(url, verbose=False).predict(prompt="a grass background", seed_mode="fixed", seed=1,
                                                    **values, api_name="/generate")
        assert Image.open(result[0]).size == SIZE
    finally:
        demo.close()
