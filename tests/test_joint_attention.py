"""MQD inside joint attention (FLUX dual- and single-stream blocks, SD3 joint blocks), on tiny random transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

import pipelines.joint_attention as joint
from pipelines.attention import RegionMaps
from pipelines.joint_attention import (FluxJointAttnProcessor, JointRegions, SD3JointAttnProcessor,
                                       joint_regional_attention, trim_padding)
from session_properties import three_regions as region_masks
from tiny_mmdit import POOLED_DIM, TEXT_DIM, call, tiny_flux, tiny_sd3

LATENT = (8, 8)  # latent grid; both transformers see a 4x4 token grid
GRID = (4, 4)
TOKENS = 6  # per region prompt (the T5 window)
REAL = [4, 3, 5]  # real tokens of the three region prompts (the rest is padding)
NULL_REAL = 2  # real tokens of the null prompt


def text_mask(real_counts, rows=1):
    mask = torch.zeros(rows, len(real_counts) * TOKENS, dtype=torch.bool)
    for region, count in enumerate(real_counts):
        mask[:, region * TOKENS:region * TOKENS + count] = True
    return mask


def cfg_regions(masks=None):
    """Three regions, CFG rows [uncond (plain, the null prompt three times), cond (the region prompts)]."""
    maps = RegionMaps.from_masks(masks or region_masks(), TOKENS, LATENT)
    mask = torch.cat([text_mask([NULL_REAL] * 3), text_mask(REAL)])
    return JointRegions(maps, GRID, mask, plain_rows=(0,))


def inputs(rows=2, count=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(rows, 4, *LATENT, generator=generator)
    text = torch.randn(rows, count * TOKENS, TEXT_DIM, generator=generator)
    pooled = torch.randn(rows, POOLED_DIM, generator=generator)
    return latents, text, pooled


MODELS = {"flux": tiny_flux, "sd3": tiny_sd3}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    return request.param, MODELS[request.param]()


# ---------------------------------------------------------------- the weights, measured inside the processor
def captured_attention(monkeypatch, transformer, regions, plain_blocks=(0, 0)):
    """Run the transformer under MQD; return, per routed attention call, its kind, the query, key and the mask the
    fused scaled-dot-product call received."""
    calls, real_sdpa = [], joint.F.scaled_dot_product_attention
    base = joint.processor_class(transformer)

    class Spy(base):
        split_softmax = False  # one fused call: the mask it receives is what these tests read

        def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            kind = "sd3" if base is SD3JointAttnProcessor else "dual" if encoder_hidden_states is not None else "single"
            calls.append({"kind": kind, "plain": self.regions.maps.owners.min() == regions.maps.count - 1})
            return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    def sdpa(query, key, value, attn_mask=None, **kwargs):
        if calls and "query" not in calls[-1]:
            calls[-1].update(query=query, key=key, mask=attn_mask)
        return real_sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(joint.F, "scaled_dot_product_attention", sdpa)
    latents, text, pooled = inputs()
    with joint_regional_attention(transformer, regions, plain_blocks, processor=Spy):
        call(transformer, latents, text, pooled)
    monkeypatch.undo()
    return calls


def weights_of(entry):
    query, key, mask = entry["query"], entry["key"], entry["mask"]
    scores = query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)  # [B, heads, S, S]


def token_roles(regions, text_first):
    """Per joint token: is it text, its region (text: its prompt; image: its owner)."""
    text_owner = torch.arange(regions.maps.count).repeat_interleave(regions.maps.tokens)
    owners = regions.image_owners()
    is_text = torch.cat([torch.ones_like(text_owner), torch.zeros_like(owners)]).bool()
    region = torch.cat([text_owner, owners])
    if not text_first:
        is_text, region = torch.cat([is_text[len(text_owner):], is_text[:len(text_owner)]]), \
            torch.cat([region[len(text_owner):], region[:len(text_owner)]])
    return is_text, region


def test_image_tokens_put_zero_weight_on_other_regions_prompts_and_on_padding(model, monkeypatch):
    name, transformer = model
    regions = cfg_regions()
    calls = captured_attention(monkeypatch, transformer, regions)
    kinds = [entry["kind"] for entry in calls]
    assert kinds == (["dual", "dual", "single", "single"] if name == "flux" else ["sd3"] * 3)
    is_text, region = token_roles(regions, text_first=name == "flux")
    null_real, real = (torch.zeros_like(is_text) for _ in range(2))
    null_real[is_text], real[is_text] = regions.text_mask[0], regions.text_mask[1]
    for entry in calls:
        weights = weights_of(entry)
        cond, uncond = weights[1], weights[0]
        for r in range(3):
            images = ~is_text & (region == r)
            assert images.any(), f"region {r} owns no image token on the {GRID} grid"
            own_prompt = is_text & (region == r) & real
            rows = cond[:, images]  # [heads, queries, keys]
            assert torch.all(rows[..., is_text & ~own_prompt] == 0), f"{entry['kind']}: another prompt or padding"
            assert torch.all(rows[..., own_prompt].sum(-1) > 0), "the region's own prompt is heard"
            text_queries = cond[:, own_prompt]
            assert torch.all(text_queries[..., ~is_text & (region != r)] == 0), "a prompt hears only its region"
            assert torch.all(text_queries[..., is_text & ~own_prompt] == 0)
            # the unconditional row is plain: every image token hears the first copy of the null prompt
            first_copy = is_text & (region == 0) & null_real
            assert torch.all(uncond[:, images][..., is_text & ~first_copy] == 0)
            assert torch.all(uncond[:, images][..., first_copy].sum(-1) > 0)
        padding = is_text & ~real
        assert torch.all(cond[:, ~padding][..., padding] == 0), "nobody attends to padding"
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_plain_blocks_hear_the_edit_prompt_everywhere_and_the_rest_stays_routed(monkeypatch):
    transformer = tiny_flux()
    regions = cfg_regions()
    calls = captured_attention(monkeypatch, transformer, regions, plain_blocks=(1, 1))
    assert [entry["plain"] for entry in calls] == [True, False, False, True]
    is_text, region = token_roles(regions, text_first=True)
    background_images = ~is_text & (region == 0)
    edit_prompt = is_text & (region == 2)
    for entry in calls:
        heard = weights_of(entry)[1][:, background_images][..., edit_prompt].sum()
        assert (heard > 0) == entry["plain"], "the edit's prompt reaches the background in plain blocks only"
    with pytest.raises(ValueError, match="plain_blocks"):
        with joint_regional_attention(transformer, regions, plain_blocks=(3, 2)):
            pass


# ---------------------------------------------------------------- the fused call against references
def test_the_fused_call_equals_the_per_region_reference_in_every_block(model):
    name, transformer = model
    latents, text, pooled = inputs(seed=1)
    reference_class = joint.processor_class(transformer, reference=True)
    with joint_regional_attention(transformer, cfg_regions()):
        fused = call(transformer, latents, text, pooled)
    with joint_regional_attention(transformer, cfg_regions(), processor=reference_class):
        loop = call(transformer, latents, text, pooled)
    assert (fused - loop).abs().max().item() < 1e-5
    # the unconditional row is what the plain model gives for the first copy's real tokens alone
    alone = call(transformer, latents[:1], text[:1, :NULL_REAL].contiguous(), pooled[:1])
    assert (fused[:1] - alone).abs().max().item() < 1e-5


def test_the_cpu_split_softmax_equals_the_one_masked_call(model, monkeypatch):
    """On the CPU image queries attend in two calls (image keys unmasked, text keys masked) merged by their
    log-sum-exp; that is the masked call's softmax, row for row."""
    name, transformer = model
    assert joint._CPU_FLASH is not None, "this torch has the CPU flash kernel the split path uses"
    latents, text, pooled = inputs(seed=4)
    split_calls = []
    real_split = joint.JointProcessorBase.attend_split
    monkeypatch.setattr(joint.JointProcessorBase, "attend_split",
                        lambda self, *args: split_calls.append(1) or real_split(self, *args))
    with joint_regional_attention(transformer, cfg_regions()):
        split = call(transformer, latents, text, pooled)
    assert len(split_calls) == (4 if name == "flux" else 3)
    monkeypatch.setattr(joint.JointProcessorBase, "split_softmax", False)
    with joint_regional_attention(transformer, cfg_regions()):
        fused = call(transformer, latents, text, pooled)
    assert len(split_calls) == (4 if name == "flux" else 3)
    assert (split - fused).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", ["dual", "single", "sd3-joint", "sd3-last"])
def test_one_block_fused_equals_reference(kind):
    """Each block type on its own, with random inputs at the block's width."""
    transformer = tiny_sd3() if kind.startswith("sd3") else tiny_flux()
    regions = cfg_regions()
    torch.manual_seed(2)
    image = torch.randn(2, 16, 16)
    text = torch.randn(2, regions.text_tokens, 16)
    if kind.startswith("sd3"):
        attn = transformer.transformer_blocks[-1 if kind == "sd3-last" else 0].attn
        assert attn.context_pre_only == (kind == "sd3-last")
        fused = SD3JointAttnProcessor(regions)(attn, image, text)
        loop = joint.SD3JointLoopProcessor(regions)(attn, image, text)
    else:
        rotary = transformer.pos_embed(torch.cat([joint.flux_text_ids(regions.text_tokens), joint.flux_image_ids(GRID)]))
        block = transformer.transformer_blocks[0] if kind == "dual" else transformer.single_transformer_blocks[0]
        args = (image, text) if kind == "dual" else (torch.cat([text, image], dim=1), None)
        fused = FluxJointAttnProcessor(regions)(block.attn, *args, image_rotary_emb=rotary)
        loop = joint.FluxJointLoopProcessor(regions)(block.attn, *args, image_rotary_emb=rotary)
    fused, loop = (x if isinstance(x, tuple) else (x,) for x in (fused, loop))
    for a, b in zip(fused, loop):
        assert (a - b).abs().max().item() < 1e-5


def test_one_region_without_padding_is_exactly_diffusers_own_attention(model):
    name, transformer = model
    latents, text, pooled = inputs(count=1, seed=3)
    originals = dict(transformer.attn_processors)
    plain = call(transformer, latents, text, pooled)
    one = JointRegions(RegionMaps.from_masks(region_masks()[:1], TOKENS, LATENT), GRID)
    with joint_regional_attention(transformer, one):
        assert all(isinstance(p, (FluxJointAttnProcessor, SD3JointAttnProcessor))
                   for n, p in transformer.attn_processors.items() if n.endswith(".attn.processor"))
        ours = call(transformer, latents, text, pooled)
    assert torch.equal(plain, ours)
    assert dict(transformer.attn_processors) == originals


def test_padding_never_attended_makes_trimming_it_exact(model):
    """A padded prompt under its text mask gives what the prompt cut to its real tokens gives, in diffusers'
    own plain attention, and trim_padding cuts the columns that are padding in every prompt."""
    name, transformer = model
    latents, text, pooled = inputs(rows=1, seed=4)
    regions = JointRegions(cfg_regions().maps, GRID, text_mask(REAL))
    with joint_regional_attention(transformer, regions):
        padded = call(transformer, latents, text, pooled)
    trimmed, mask, tokens = trim_padding(text, regions.text_mask, TOKENS, 3)
    assert tokens == max(REAL) and trimmed.shape[1] == 3 * max(REAL)
    shorter = JointRegions(RegionMaps.from_masks(region_masks(), tokens, LATENT), GRID, mask)
    with joint_regional_attention(transformer, shorter):
        cut = call(transformer, latents, trimmed, pooled)
    assert (padded - cut).abs().max().item() < 1e-5
    one = JointRegions(RegionMaps.from_masks(region_masks()[:1], TOKENS, LATENT), GRID, text_mask(REAL[:1]))
    with joint_regional_attention(transformer, one):
        masked = call(transformer, latents, text[:, :TOKENS].contiguous(), pooled)
    diffusers_plain = call(transformer, latents, text[:, :REAL[0]].contiguous(), pooled)
    assert (masked - diffusers_plain).abs().max().item() < 1e-5


def test_concatenated_prompts_keep_the_rotary_positions_of_a_lone_prompt():
    """With every image token in region 1, FLUX under MQD gives what FLUX gives for prompt 1 alone: the prompts
    side by side all sit at text position 0, as a lone prompt does."""
    transformer = tiny_flux()
    latents, text, pooled = inputs(rows=1, count=2, seed=5)
    everything = [np.ones((16, 16), dtype=bool)] * 2
    regions = JointRegions(RegionMaps.from_masks(everything, TOKENS, LATENT), GRID)
    with joint_regional_attention(transformer, regions):
        routed = call(transformer, latents, text, pooled)
    alone = call(transformer, latents, text[:, TOKENS:].contiguous(), pooled)
    assert (routed - alone).abs().max().item() < 1e-5
    assert torch.equal(joint.flux_image_ids(GRID), FluxPipeline._prepare_latent_image_ids(1, *GRID, "cpu", torch.float32))
    assert torch.equal(joint.flux_text_ids(7), torch.zeros(7, 3))


# ---------------------------------------------------------------- installing and restoring
def test_processors_are_restored_when_the_call_raises(model):
    name, transformer = model
    originals = dict(transformer.attn_processors)
    with pytest.raises(RuntimeError, match="simulated"):
        with joint_regional_attention(transformer, cfg_regions()):
            raise RuntimeError("simulated failure mid-edit")
    assert dict(transformer.attn_processors) == originals
    latents, text, pooled = inputs(count=2)  # two regions' worth of text where the maps expect three
    with pytest.raises(ValueError, match="text and .* image tokens"):
        with joint_regional_attention(transformer, cfg_regions()):
            call(transformer, latents, text, pooled)
    assert dict(transformer.attn_processors) == originals


def test_sd35_image_only_attention_stays_plain():
    transformer = tiny_sd3()
    originals = dict(transformer.attn_processors)
    with joint_regional_attention(transformer, cfg_regions()):
        current = transformer.attn_processors
        assert isinstance(current["transformer_blocks.0.attn.processor"], SD3JointAttnProcessor)
        assert current["transformer_blocks.0.attn2.processor"] is originals["transformer_blocks.0.attn2.processor"]


def test_bad_regions_are_refused_with_a_clear_message():
    maps = RegionMaps.from_masks(region_masks(), TOKENS, LATENT)
    with pytest.raises(ValueError, match="bool tensor"):
        JointRegions(maps, GRID, torch.ones(1, 3 * TOKENS))
    with pytest.raises(ValueError, match="at least one real token"):
        JointRegions(maps, GRID, text_mask([2, 0, 1]))
    with pytest.raises(ValueError, match="grid"):
        JointRegions(maps, (3, 3))
    with pytest.raises(ValueError, match="plain row"):
        JointRegions(maps, GRID, plain_rows=(2,)).allowed(2, text_first=True)
    with pytest.raises(ValueError, match="no joint attention MQD processor"):
        joint.processor_class(torch.nn.Linear(2, 2))
    assert isinstance(tiny_flux(), FluxTransformer2DModel)
