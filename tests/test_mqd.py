"""Multi-Query Disentanglement and re-editing any layer (replace / remove / hide with replay)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pipelines.attention as attention_module
from editor import EditSettings, Session
from pipelines import EditRegion, LayeredPipeline, masks
from pipelines.attention import RegionLoopAttnProcessor, RegionMaps, RegionalAttnProcessor, owner_map
from session_properties import three_regions
from tiny_models import IMAGE_SIZE, tiny_pipeline

STEPS = 5
SIZE = (IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline(4)


@pytest.fixture
def session(pipeline):
    session = Session(pipeline, model="tiny", defaults=EditSettings(num_inference_steps=STEPS))
    session.generate("a grass background", seed=3)
    return session


def cross_attention_layers(unet):
    return [module for name, module in unet.named_modules() if name.endswith("attn2")]


# ---------------------------------------------------------------- the processor itself
def test_later_layers_occlude_earlier_ones_in_the_owner_map():
    owners = owner_map(three_regions())
    assert owners[0, 0] == 1 and owners[6, 6] == 2 and owners[0, 15] == 0 and owners[6, 10] == 2


@pytest.mark.parametrize("query_length", [256, 64, 16])
def test_queries_hear_only_their_own_regions_tokens(pipeline, query_length):
    """Changing one region's prompt tokens changes the output of that region's queries and of no other."""
    torch.manual_seed(1)
    maps = RegionMaps.from_masks(three_regions(), tokens_per_region=5, latent_size=(16, 16))
    attn = cross_attention_layers(pipeline.unet)[0]
    hidden = torch.randn(2, query_length, attn.to_q.in_features)
    context = torch.randn(2, 15, attn.to_k.in_features)
    before = RegionalAttnProcessor(maps)(attn, hidden, encoder_hidden_states=context)
    owners = maps.query_owners(query_length)
    for region in range(3):
        changed = context.clone()
        changed[:, region * 5:(region + 1) * 5] = torch.randn(2, 5, attn.to_k.in_features)
        after = RegionalAttnProcessor(maps)(attn, hidden, encoder_hidden_states=changed)
        moved = (after - before).abs().amax(dim=(0, 2)) > 1e-6  # per query
        assert torch.equal(moved, owners == region), region


@pytest.mark.parametrize("text_mask", [False, True])
def test_the_fused_call_equals_the_per_region_loop(pipeline, text_mask):
    """At every attention grid, with and without a text mask (padding tokens, as diffusers hands it over)."""
    torch.manual_seed(0)
    maps = RegionMaps.from_masks(three_regions(), tokens_per_region=5, latent_size=(16, 16))
    attn = cross_attention_layers(pipeline.unet)[0]
    real = torch.tensor([[1, 1, 1, 0, 0] * 3, [1, 1, 1, 1, 0] * 3], dtype=torch.bool)
    bias = ((1 - real.float()) * -10000.0)[:, None] if text_mask else None
    for query_length in maps.grids:
        hidden = torch.randn(2, query_length, attn.to_q.in_features)
        context = torch.randn(2, 15, attn.to_k.in_features)
        fused = RegionalAttnProcessor(maps)(attn, hidden, encoder_hidden_states=context, attention_mask=bias)
        loop = RegionLoopAttnProcessor(maps)(attn, hidden, encoder_hidden_states=context, attention_mask=bias)
        assert (fused - loop).abs().max().item() < 1e-5, query_length


def test_a_region_hidden_at_a_grid_costs_nothing_there_and_the_result_is_unchanged(pipeline):
    """A one-pixel layer owns a query at the 16x16 grid only; buckets stay under twice the query count."""
    regions = three_regions()
    regions[2] = np.zeros((16, 16), dtype=bool)
    regions[2][5, 12] = True
    maps = RegionMaps.from_masks(regions, tokens_per_region=5, latent_size=(16, 16))
    attn = cross_attention_layers(pipeline.unet)[0]
    context = torch.randn(2, 15, attn.to_k.in_features)
    processor = RegionalAttnProcessor(maps)
    for query_length, present in ((256, {0, 1, 2}), (64, {0, 1}), (16, {0, 1})):
        region, slots, position = maps.buckets(query_length, torch.device("cpu"))
        assert set(region.tolist()) == present
        assert slots.numel() < 2 * query_length
        assert sorted(slots.flatten()[position].tolist()) == list(range(query_length))  # every query, once
        torch.manual_seed(query_length)
        hidden = torch.randn(2, query_length, attn.to_q.in_features)
        fused = processor(attn, hidden, encoder_hidden_states=context)
        loop = RegionLoopAttnProcessor(maps)(attn, hidden, encoder_hidden_states=context)
        assert (fused - loop).abs().max().item() < 1e-5


def test_erode_dilate_routing_gives_partly_covered_cells_to_earlier_layers():
    background = np.ones((8, 8), dtype=bool)
    earlier = np.zeros((8, 8), dtype=bool)
    earlier[:, :3] = True  # 3/4 of each left cell of a 2x2 grid (cells of 4x4 pixels)
    current = np.zeros((8, 8), dtype=bool)
    current[:, 3:] = True  # 1/4 of each left cell, all of each right one
    owners = owner_map([background, earlier, current])
    majority = attention_module.downsampled_owners(owners, (2, 2), 3, "majority").view(2, 2)
    assert majority.tolist() == [[1, 2], [1, 2]]
    small = np.zeros((8, 8), dtype=bool)
    small[0, 1] = True  # touches one left cell only
    owners = owner_map([background, small, current])
    majority = attention_module.downsampled_owners(owners, (2, 2), 3, "majority").view(2, 2)
    eroded = attention_module.downsampled_owners(owners, (2, 2), 3, "erode-dilate").view(2, 2)
    assert majority.tolist() == [[0, 2], [0, 2]]  # the left cells are mostly background
    assert eroded.tolist() == [[1, 2], [0, 2]]  # dilated: the earlier layer takes the cell it touches
    partial = np.zeros((8, 8), dtype=bool)
    partial[:, 2:] = True  # half of each left cell
    owners = owner_map([background, partial])
    eroded = attention_module.downsampled_owners(owners, (2, 2), 2, "erode-dilate").view(2, 2)
    assert eroded.tolist() == [[0, 1], [0, 1]]  # the half-covered left cells stay background
    assert attention_module.downsampled_owners(owners, (2, 2), 2, "majority").view(2, 2).tolist() == [[1, 1], [1, 1]]
    with pytest.raises(ValueError, match="routing"):
        RegionMaps.from_masks([background, partial], 4, (8, 8), routing="nearest")


def test_binary_bcg_mask_is_nearest_resized_and_fractional_averages():
    region = np.zeros((8, 8), dtype=bool)
    region[:, 1:6] = True
    fractional = masks.bcg_latent_mask(region, (2, 2), "fractional")[0, 0]
    binary = masks.bcg_latent_mask(region, (2, 2), "binary")[0, 0]
    assert fractional.tolist() == [[0.75, 0.5], [0.75, 0.5]]
    assert binary.tolist() == [[0.0, 1.0], [0.0, 1.0]]  # each cell's top-left pixel decides
    with pytest.raises(ValueError, match="bcg_mask"):
        masks.bcg_latent_mask(region, (2, 2), "soft")


def test_the_ablation_switches_reach_the_pipeline_and_change_the_edit(session):
    session.edit("a blue circle", (0, 0, 14, 30))
    default = np.asarray(session.edit("a red star", (9, 9, 27, 27))).copy()
    session.undo()
    for changed in ({"bcg_mask": "binary"}, {"routing": "erode-dilate"}):
        image = np.asarray(session.edit("a red star", (9, 9, 27, 27), **changed)).copy()
        assert session.layers[-1].settings[next(iter(changed))] == next(iter(changed.values()))
        assert not np.array_equal(image, default), changed
        session.undo()
    with pytest.raises(ValueError, match="routing"):
        EditSettings(routing="majorty")


def test_only_cross_attention_is_routed_and_processors_come_back(session):
    originals = dict(session.pipeline.unet.attn_processors)
    seen = {}

    def look(pipe, step, timestep, tensors):
        seen.update(pipe.unet.attn_processors)
        return tensors

    session.edit("a red star", (2, 2, 16, 16), callback_on_step_end=look)
    routed = {name for name, processor in seen.items() if isinstance(processor, RegionalAttnProcessor)}
    assert routed == {name for name in originals if name.endswith("attn2.processor")} and routed
    assert all(seen[name] is originals[name] for name in originals if name not in routed)
    assert dict(session.pipeline.unet.attn_processors) == originals


@pytest.mark.parametrize("fault", ["failing callback", "out of memory in the UNet"])
def test_processors_and_layers_are_restored_when_an_edit_raises(session, monkeypatch, fault):
    session.edit("a red star", (2, 2, 16, 16))
    originals = dict(session.pipeline.unet.attn_processors)
    layers, image = session.layers, np.asarray(session.image).copy()
    callback = None
    if fault == "failing callback":
        def callback(pipe, step, timestep, tensors):
            raise RuntimeError("simulated failure mid-edit")
    else:
        unet, forward, calls = session.pipeline.unet, session.pipeline.unet.forward, []

        def forward_until_memory_runs_out(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise torch.OutOfMemoryError("simulated: CUDA out of memory")
            return forward(*args, **kwargs)

        monkeypatch.setattr(unet, "forward", forward_until_memory_runs_out)

    with pytest.raises((RuntimeError, torch.OutOfMemoryError), match="simulated"):
        session.edit("a blue circle", (10, 10, 30, 30), callback_on_step_end=callback)
    monkeypatch.undo()
    assert dict(session.pipeline.unet.attn_processors) == originals
    assert session.layers == layers and np.array_equal(np.asarray(session.image), image)
    session.edit("a blue circle", (10, 10, 30, 30))  # the session goes on working
    assert len(session.layers) == len(layers) + 1


# ---------------------------------------------------------------- modes through the Session
def test_qd_and_mqd_agree_when_there_are_no_earlier_objects(session):
    qd = np.asarray(session.edit("a red star", (4, 4, 20, 20), attention="qd-background")).copy()
    session.undo()
    mqd = np.asarray(session.edit("a red star", (4, 4, 20, 20), attention="mqd")).copy()
    session.undo()
    plain = np.asarray(session.edit("a red star", (4, 4, 20, 20), attention="bcg")).copy()
    assert np.array_equal(qd, mqd)
    assert not np.array_equal(mqd, plain)
    assert session.layers[-1].info["attention_regions"] == 0


def test_mqd_routes_earlier_layers_and_qd_does_not(session):
    session.edit("a blue circle", (0, 0, 16, 32))
    qd = np.asarray(session.edit("a red star", (8, 8, 24, 24), attention="qd-background")).copy()
    assert session.layers[-1].info["attention_regions"] == 2
    session.undo()
    mqd = np.asarray(session.edit("a red star", (8, 8, 24, 24), attention="mqd")).copy()
    assert session.layers[-1].info["attention_regions"] == 3
    assert not np.array_equal(qd, mqd)


def _earlier(count):
    """(embeds, mask) of a background and `count` - 1 edit layers, each embedding filled with its index."""
    regions = []
    for index in range(count):
        mask = np.ones(SIZE[::-1], dtype=bool) if index == 0 else masks.box_mask((0, 0, 8 * index, 8), SIZE)
        regions.append((torch.full((1, 4, 2), float(index)), mask))
    return regions


@pytest.mark.parametrize("attention, outside", [("qd-background", 0), ("qd-previous", 2), ("qd", 0)])
def test_qd_modes_give_everything_outside_the_edit_one_earlier_prompt(attention, outside):
    edit = EditRegion(region=masks.box_mask((8, 8, 24, 24), SIZE), soft_mask=np.zeros(SIZE[::-1], np.float32),
                      previous_image=np.zeros((*SIZE[::-1], 3), np.uint8), previous_trajectory=(),
                      previous_schedule=(), earlier_regions=_earlier(3))
    prompt = torch.full((1, 4, 2), 9.0)
    regions = LayeredPipeline.attention_regions(attention, edit, prompt)
    assert len(regions) == 2 and regions[1][0] is prompt and regions[1][1] is edit.region
    assert torch.all(regions[0][0] == outside) and regions[0][1].all()
    mqd = LayeredPipeline.attention_regions("mqd", edit, prompt)
    assert [float(e[0, 0, 0]) for e, _ in mqd] == [0, 1, 2, 9]


def test_projects_saved_with_qd_load_as_qd_background(session, tmp_path):
    assert EditSettings(attention="qd").attention == "qd-background"
    session.edit("a red star", (4, 4, 20, 20), attention="qd-background")
    session.save(tmp_path / "project")
    manifest = next((tmp_path / "project").glob("*.json"))
    manifest.write_text(manifest.read_text().replace('"qd-background"', '"qd"'))
    assert '"qd"' in manifest.read_text()
    loaded = Session.load(tmp_path / "project", pipeline=session.pipeline)
    assert EditSettings.from_dict(dict(loaded.layers[1].settings)).attention == "qd-background"
    loaded.replace(1, prompt="a blue star")  # replays through the pipeline with the old name
    assert len(loaded.layers) == 2


def test_with_overlapping_layers_the_later_one_wins(session):
    session.edit("a blue circle", (0, 0, 20, 20))
    session.edit("a red star", (10, 10, 30, 30))
    overlap = masks.box_mask((10, 10, 20, 20), SIZE)
    top = np.asarray(session.image)
    assert np.array_equal(top[overlap], np.asarray(session.layers[2].image)[overlap])
    earlier_only = masks.box_mask((0, 0, 20, 20), SIZE) & ~masks.box_mask((10, 10, 30, 30), SIZE)
    assert np.array_equal(top[earlier_only], np.asarray(session.layers[1].image)[earlier_only])


# ---------------------------------------------------------------- re-edit, remove, hide
BOXES = [(0, 0, 14, 14), (16, 2, 30, 16), (4, 16, 18, 30), (18, 18, 31, 31)]


@pytest.fixture
def four_layers(session):
    for prompt, box in zip(["a red star", "a blue circle", "a white moon", "a yellow heart"], BOXES):
        session.edit(prompt, box)
    return session


def union_of(boxes):
    union = np.zeros(SIZE[::-1], dtype=bool)
    for box in boxes:
        union |= masks.box_mask(box, SIZE)
    return union


def test_reedit_of_layer_1_regenerating_the_layers_above_and_undo_restores_exactly(four_layers):
    session = four_layers
    before_layers, before_image = session.layers, np.asarray(session.image).copy()
    background = np.asarray(session.layers[0].image).copy()

    session.replace(1, prompt="a green tree", seed=42, layers_above="regenerate")
    assert len(session.layers) == 5
    assert session.layers[1].prompt == "a green tree" and session.layers[1].seed == 42
    assert [layer.prompt for layer in session.layers[2:]] == [layer.prompt for layer in before_layers[2:]]
    assert all(new is not old for new, old in zip(session.layers[1:], before_layers[1:])), "layers 2-4 replayed"
    assert not np.array_equal(np.asarray(session.image), before_image)
    outside = ~union_of(BOXES)
    assert np.array_equal(np.asarray(session.image)[outside], background[outside])

    session.undo()
    assert session.layers == before_layers
    assert np.array_equal(np.asarray(session.image), before_image)


def test_replace_with_a_new_mask_moves_the_layer(four_layers):
    session = four_layers
    session.replace(2, mask=(20, 20, 30, 30))
    assert masks.to_binary(np.asarray(session.layers[2].user_mask), SIZE).sum() == 100


def test_replace_background_repaints_under_the_same_edits(four_layers):
    session = four_layers
    old = np.asarray(session.image).copy()
    session.replace(0, prompt="a sea background", seed=9, layers_above="regenerate")
    assert session.seed == 9 and session.layers[0].prompt == "a sea background"
    assert all(layer.seed == 9 for layer in session.layers[1:]), "edits that shared the noise follow the new seed"
    assert not np.array_equal(np.asarray(session.image), old)


def test_remove_replays_without_the_layer_and_undo_restores(four_layers):
    session = four_layers
    before_layers, before_image = session.layers, np.asarray(session.image).copy()
    background = np.asarray(session.layers[0].image)
    session.remove(2)
    assert [layer.prompt for layer in session.layers] == [before_layers[i].prompt for i in (0, 1, 3, 4)]
    outside = ~union_of([BOXES[0], BOXES[2], BOXES[3]])
    assert np.array_equal(np.asarray(session.image)[outside], background[outside])
    only_removed = masks.box_mask(BOXES[1], SIZE) & ~union_of([BOXES[0], BOXES[2], BOXES[3]])
    assert np.array_equal(np.asarray(session.image)[only_removed], background[only_removed])
    session.undo()
    assert session.layers == before_layers and np.array_equal(np.asarray(session.image), before_image)


def test_hide_and_show_a_layer(four_layers):
    session = four_layers
    before_layers, before_image = session.layers, np.asarray(session.image).copy()
    session.set_visible(2, False)
    assert len(session.layers) == 5 and not session.layers[2].visible
    only_hidden = masks.box_mask(BOXES[1], SIZE) & ~union_of([BOXES[0], BOXES[2], BOXES[3]])
    assert np.array_equal(np.asarray(session.image)[only_hidden], np.asarray(session.layers[0].image)[only_hidden])
    session.set_visible(2, True)
    assert np.array_equal(np.asarray(session.image), before_image), "showing again repaints the same layers"
    session.undo()
    session.undo()
    assert session.layers == before_layers


def test_an_edit_on_a_hidden_top_layer_builds_on_the_visible_image(four_layers):
    session = four_layers
    session.set_visible(4, False)
    shown = np.asarray(session.image).copy()
    assert np.array_equal(shown, np.asarray(session.layers[3].image))
    session.edit("a red star", (0, 20, 10, 30))
    outside = ~masks.box_mask((0, 20, 10, 30), SIZE)
    assert np.array_equal(np.asarray(session.image)[outside], shown[outside])


@pytest.mark.parametrize("call", [
    lambda s: s.remove(0), lambda s: s.set_visible(0, False), lambda s: s.remove(9),
    lambda s: s.replace(-1, prompt="x"), lambda s: s.replace(1, mask=np.zeros((3, 3))),
])
def test_bad_layer_operations_are_clear_errors_and_change_nothing(four_layers, call):
    before = four_layers.layers
    with pytest.raises((ValueError, IndexError, TypeError)):
        call(four_layers)
    assert four_layers.layers == before
