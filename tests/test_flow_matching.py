"""BCG on flow-matching schedules (SD3, FLUX): shifted sigmas, FLUX's packed 2x2 latents, the re-noise fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import FluxPipeline, calculate_shift

from memory.record import normalise_schedule
from pipelines import bcg, flow_matching
from pipelines.joint_attention import flux_image_ids, flux_text_ids
from pipelines.schedulers import schedule_fingerprint
from tiny_mmdit import POOLED_DIM, TEXT_DIM, call, tiny_flux

# The published scheduler configs (FLUX.1: resolution-dependent shift; SD3: a fixed shift of 3).
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)
SD3_SCHEDULER = dict(shift=3.0)
LATENT = (8, 8)


def flux_sampler(steps=6, tokens=16):
    sampler = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
    flow_matching.set_flow_timesteps(sampler, steps, tokens)
    return sampler


# ---------------------------------------------------------------- packing
def test_packing_is_diffusers_layout_and_round_trips_bit_for_bit():
    latents = torch.randn(2, 16, 6, 10)
    packed = flow_matching.pack(latents)
    assert torch.equal(packed, FluxPipeline._pack_latents(latents, 2, 16, 6, 10))
    assert torch.equal(flow_matching.unpack(packed, (6, 10)), latents)
    assert torch.equal(FluxPipeline._unpack_latents(packed, 48, 80, 8), latents)
    with pytest.raises(ValueError, match="even H and W"):
        flow_matching.pack(torch.zeros(1, 4, 5, 6))
    with pytest.raises(ValueError, match="do not pack"):
        flow_matching.unpack(packed, (8, 10))


def test_blending_packed_latents_with_the_packed_mask_is_the_latent_grid_blend():
    generator = torch.Generator().manual_seed(0)
    latents, remembered = (torch.randn(1, 16, 8, 12, generator=generator) for _ in range(2))
    mask = torch.zeros(1, 1, 8, 12)
    mask[..., 2:7, 3:10] = 1.0
    mask[..., 2, 3:10] = 0.25  # a fractional edge: cells the region covers partly
    grid = bcg.blend(latents, remembered, mask)
    packed = bcg.blend(flow_matching.pack(latents), flow_matching.pack(remembered), flow_matching.pack_mask(mask, 16))
    assert torch.equal(flow_matching.unpack(packed, (8, 12)), grid)
    outside = mask.expand_as(grid) == 0
    assert torch.equal(grid[outside], remembered[outside])


# ---------------------------------------------------------------- schedules
def test_flux_sigmas_are_shifted_by_resolution_as_diffusers_shifts_them():
    for tokens in (16, 1024, 4096):
        sampler = flux_sampler(steps=8, tokens=tokens)
        reference = FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)
        reference.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8), mu=calculate_shift(tokens, 256, 4096, 0.5, 1.15))
        assert torch.equal(sampler.sigmas, reference.sigmas)
        assert sampler.sigmas[0] == 1.0 and sampler.sigmas[-1] == 0.0
    low, high = flux_sampler(8, 256).sigmas, flux_sampler(8, 4096).sigmas
    assert torch.all(high[1:-1] > low[1:-1]), "more tokens: more steps at high noise"
    sd3 = FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)
    flow_matching.set_flow_timesteps(sd3, 8, image_tokens=16)
    plain = torch.linspace(1.0, 1 / 8, 8)
    assert (sd3.sigmas[:-1] > 0.5).sum() > (plain > 0.5).sum(), "shift 3 keeps more steps at high noise"


def test_the_fingerprint_tells_shifted_schedules_apart_in_integers_the_memory_accepts():
    a, b = flux_sampler(8, 1024), flux_sampler(8, 1025)  # one token more: a shift smaller than a timestep
    assert [int(t) for t in a.timesteps] == [int(t) for t in b.timesteps], "whole timesteps alone coincide"
    assert schedule_fingerprint(a) != schedule_fingerprint(b)
    assert schedule_fingerprint(a) == schedule_fingerprint(flux_sampler(8, 1024))
    assert schedule_fingerprint(a)[0] == "FlowMatchEulerDiscreteScheduler"
    assert normalise_schedule(schedule_fingerprint(a)) == schedule_fingerprint(a)


def test_stochastic_sampling_is_refused():
    sampler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match="deterministic"):
        flow_matching.set_flow_timesteps(sampler, 4, 16)


def test_renoised_fallback_is_the_flow_matching_interpolation_at_each_steps_sigma():
    sampler = flux_sampler(steps=5)
    x0, noise = torch.randn(1, 4, *LATENT), torch.randn(1, 4, *LATENT)
    trajectory = bcg.renoised_trajectory(sampler, x0, noise, sampler.timesteps)
    assert len(trajectory) == 5 and trajectory[-1] is x0
    for step, latent in enumerate(trajectory[:-1]):
        sigma = float(sampler.sigmas[step + 1])
        torch.testing.assert_close(latent, (1 - sigma) * x0 + sigma * noise, rtol=0, atol=1e-6)
    # the level the sampler itself would reach: one exact Euler step from pure noise along the true velocity
    velocity = noise - x0
    stepped = sampler.step(velocity, sampler.timesteps[0], noise).prev_sample
    torch.testing.assert_close(stepped, trajectory[0], rtol=0, atol=1e-5)


# ---------------------------------------------------------------- BCG on a tiny FLUX
def denoise(transformer, sampler, noise, text, pooled, memory=None, mask=None, blend_steps=0, packed=False):
    """A FLUX sampling loop with BCG after each step: on the latent grid, or entirely in the packed layout."""
    latents = flow_matching.pack(noise) if packed else noise
    grid = flow_matching.token_grid(LATENT)
    trajectory = []
    for step, t in enumerate(sampler.timesteps):
        if packed:
            velocity = transformer(latents, encoder_hidden_states=text, pooled_projections=pooled,
                                   timestep=(t / 1000).expand(1), img_ids=flux_image_ids(grid),
                                   txt_ids=flux_text_ids(text.shape[1]), guidance=torch.full((1,), 3.5)).sample
        else:
            velocity = call(transformer, latents, text, pooled, sigma=t / 1000)
        latents = sampler.step(velocity, t, latents).prev_sample
        if memory is not None and step < blend_steps:
            remembered = flow_matching.pack(memory[step]) if packed else memory[step]
            latents = bcg.blend(latents, remembered, flow_matching.pack_mask(mask, 4) if packed else mask)
        trajectory.append(flow_matching.unpack(latents, LATENT) if packed else latents)
    return trajectory


@torch.no_grad()
def test_bcg_keeps_the_remembered_flux_trajectory_outside_the_mask_bit_for_bit():
    transformer = tiny_flux()
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 4, *LATENT, generator=generator)
    background_text, edit_text = (torch.randn(1, 5, TEXT_DIM, generator=generator) for _ in range(2))
    pooled = torch.randn(1, POOLED_DIM, generator=generator)
    background = denoise(transformer, flux_sampler(), noise, background_text, pooled)
    mask = torch.zeros(1, 1, *LATENT)
    mask[..., 2:6, 2:6] = 1.0
    outside = mask.expand(1, 4, *LATENT) == 0
    edit = denoise(transformer, flux_sampler(), noise, edit_text, pooled, background, mask, blend_steps=6)
    for step, (ours, kept) in enumerate(zip(edit, background)):
        assert torch.equal(ours[outside], kept[outside]), step
    assert not torch.equal(edit[-1][~outside], background[-1][~outside]), "the edit paints inside its mask"
    packed = denoise(transformer, flux_sampler(), noise, edit_text, pooled, background, mask, blend_steps=6,
                     packed=True)
    assert all(torch.equal(a, b) for a, b in zip(packed, edit)), "the packed loop is the latent-grid loop"
    # another step count: the stored steps sit at other sigmas, so BCG follows the re-noised final latent
    other = flux_sampler(steps=4)
    assert schedule_fingerprint(other) != schedule_fingerprint(flux_sampler())
    renoised = bcg.renoised_trajectory(other, background[-1], noise, other.timesteps)
    edit4 = denoise(transformer, other, noise, edit_text, pooled, renoised, mask, blend_steps=4)
    assert torch.equal(edit4[-1][outside], background[-1][outside])
