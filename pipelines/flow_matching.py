"""Flow-matching schedules (SD3, FLUX) for BCG and the memory, and FLUX's packed 2x2 latents.

A flow-matching sample at noise level sigma is x_sigma = (1 - sigma) * x0 + sigma * noise; the Euler sampler
(diffusers' FlowMatchEulerDiscreteScheduler) walks sigma from 1 to 0, with sigmas shifted toward the noisy end
(SD3: a fixed shift; FLUX: a shift that grows with the image's token count, `resolution_shift`).

BCG needs nothing new from that: the memory stores the latent after each step, and blending is the same pure
function. What differs is the fallback when the stored schedule cannot be indexed (`renoised_trajectory`: the
previous clean latent brought to each step's sigma with the session's noise) and the schedule's fingerprint
(`flow_fingerprint`: sigmas are fractions, so they are recorded in thousandths of a timestep).

FLUX's transformer reads the latent packed: each 2x2 patch of the [B, C, H, W] latent becomes one token of
C * 4 features (`pack` / `unpack`, the layout of diffusers' FluxPipeline). Packing only permutes values, so the
memory keeps the latent grid [B, C, H, W] like every other family, and BCG may blend either form: with the mask
packed alongside (`pack_mask`), blending the packed latents and unpacking gives bit for bit the latent-grid blend.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

# Timesteps of a flow-matching schedule are sigma * 1000, fractions: the fingerprint records them in thousandths
# so that schedules shifted differently (another resolution, another shift) never share a stored trajectory.
FINGERPRINT_SCALE = 1000


def is_flow_matching(scheduler) -> bool:
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler)


def check_deterministic(scheduler) -> None:
    """BCG indexes the stored trajectory by step, which fresh noise at every step would make meaningless."""
    if scheduler.config.get("stochastic_sampling", False):
        raise ValueError("stochastic_sampling draws fresh noise at every step; the layered editor needs the "
                         "deterministic Euler sampler (stochastic_sampling=False)")


def resolution_shift(config, image_tokens: int) -> float:
    """FLUX's mu: the shift grows linearly with the packed image's token count, from base_shift at
    base_image_seq_len tokens to max_shift at max_image_seq_len (as diffusers' FluxPipeline computes it)."""
    low, high = config["base_image_seq_len"], config["max_image_seq_len"]
    slope = (config["max_shift"] - config["base_shift"]) / (high - low)
    return config["base_shift"] + slope * (image_tokens - low)


def set_flow_timesteps(scheduler, num_inference_steps: int, image_tokens: int, device=None) -> None:
    """The schedule diffusers' own pipelines use: FLUX (dynamic shifting) starts from evenly spaced sigmas in
    (0, 1] shifted by `resolution_shift`; SD3 (a fixed shift) lets the scheduler space and shift them."""
    check_deterministic(scheduler)
    if scheduler.config.use_dynamic_shifting:
        sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        scheduler.set_timesteps(sigmas=sigmas, device=device, mu=resolution_shift(scheduler.config, image_tokens))
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_sigma = (1 - sigma) * x0 + sigma * noise."""
    return (1.0 - sigma) * x0 + sigma * noise


def renoised_trajectory(scheduler, final_latent: torch.Tensor, noise: torch.Tensor) -> list[torch.Tensor]:
    """The fallback memory on a flow-matching schedule: entry i is `final_latent` at the sigma the sample has after
    step i (sigmas[i + 1]); the last entry (sigma 0) is the clean latent itself."""
    levels = [float(s) for s in scheduler.sigmas[1:-1]]
    return [noised(final_latent, noise, sigma) for sigma in levels] + [final_latent]


def flow_fingerprint(scheduler) -> tuple[str, tuple[int, ...]]:
    """(scheduler class, timesteps in thousandths): integers, as the memory records schedules."""
    return type(scheduler).__name__, tuple(int(round(float(t) * FINGERPRINT_SCALE)) for t in scheduler.timesteps)


# --------------------------------------------------------------------------------------------- FLUX packing
def check_packable(latents: torch.Tensor) -> None:
    if latents.ndim != 4 or latents.shape[-1] % 2 or latents.shape[-2] % 2:
        raise ValueError(f"FLUX packs 2x2 patches: latents must be [B, C, H, W] with even H and W, got "
                         f"{tuple(latents.shape)} (images must be multiples of 16 pixels)")


def pack(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/2) * (W/2), C * 4]: one token per 2x2 patch, features (channel, dy, dx)."""
    check_packable(latents)
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack(tokens: torch.Tensor, latent_size: Sequence[int]) -> torch.Tensor:
    """The inverse of `pack` for a latent grid of `latent_size` (H, W)."""
    height, width = (int(v) for v in latent_size)
    batch, count, features = tokens.shape
    if count != (height // 2) * (width // 2) or features % 4:
        raise ValueError(f"{count} tokens of {features} features do not pack a {height}x{width} latent")
    patches = tokens.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def pack_mask(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """A latent-grid mask [B, 1, H, W] in the packed layout of a `channels`-channel latent: [B, tokens, channels * 4]."""
    return pack(mask.expand(mask.shape[0], channels, *mask.shape[-2:]).contiguous())


def token_grid(latent_size: Sequence[int], patch: int = 2) -> tuple[int, int]:
    """(h, w) of the transformer's token grid: FLUX packs and SD3 embeds 2x2 latent patches."""
    height, width = (int(v) for v in latent_size)
    if height % patch or width % patch:
        raise ValueError(f"a {height}x{width} latent does not split into {patch}x{patch} patches")
    return height // patch, width // patch
