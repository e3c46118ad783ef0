"""Background Consistency Guidance as small pure functions the denoising loop calls.

BCG replaces the background part of the latent after each scheduler step with the latent the
memory holds for that same step, instead of re-noising the previous image (the classic blended
latent method). The last `free_steps_ratio` of the steps run unblended so the boundary harmonises.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import flow_matching
from .tight import ObjectTracker


def blended_step_count(num_steps: int, free_steps_ratio: float) -> int:
    """How many leading steps are blended: N - floor(N * free_steps_ratio)."""
    return num_steps - math.floor(num_steps * free_steps_ratio)


def blend(latents: torch.Tensor, remembered: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1 - mask) * remembered + mask * latents; where mask == 0 the result *is* the remembered latent."""
    remembered = remembered.to(device=latents.device, dtype=latents.dtype)
    return torch.lerp(remembered, latents, mask.to(latents.dtype))


def matching_steps(previous_schedule, scheduler) -> list[int] | None:
    """For each step of `scheduler`, the step of a stored trajectory (made with `previous_schedule`) whose latent sits
    at the same noise level, or None when some level is missing (then BCG re-noises). A 4-step trailing DDIM run
    follows a 20-step trailing DDIM memory this way: its levels 749, 499, 249, 0 are among the 20 steps'."""
    from .schedulers import schedule_fingerprint

    name, timesteps = schedule_fingerprint(scheduler)
    previous_name, previous = previous_schedule[0], tuple(previous_schedule[1])
    if name != previous_name or flow_matching.is_flow_matching(scheduler):
        return None
    # the latent after step i sits at the next timestep's level (after the last step: clean, marked -1)
    levels_before = list(previous[1:]) + [-1]
    try:
        return [levels_before.index(level) for level in list(timesteps[1:]) + [-1]]
    except ValueError:
        return None


def renoised_trajectory(scheduler, final_latent: torch.Tensor, noise: torch.Tensor, timesteps: Sequence) -> list[torch.Tensor]:
    """The fallback memory when the stored trajectory's schedule differs from this edit's.

    Entry i is the previous final latent noised to the level the sample has after step i (the
    level of timestep i+1; the last entry is the clean latent), with the session's own noise so
    untouched regions stay coherent with the rest of the trajectory. On a flow-matching schedule (SD3, FLUX)
    the levels are the sampler's sigmas: see flow_matching.renoised_trajectory.
    """
    if flow_matching.is_flow_matching(scheduler):
        return flow_matching.renoised_trajectory(scheduler, final_latent, noise)
    levels = list(timesteps[1:])
    trajectory = [scheduler.add_noise(final_latent, noise, torch.as_tensor([t])) for t in levels]
    trajectory.append(final_latent)
    return trajectory


@dataclass
class BackgroundMemory:
    """What BCG follows during one edit: a latent per step, the blend mask, how many leading steps blend."""

    remembered: Sequence[torch.Tensor]
    source: str  # "memory", or "renoise"/"renoise-image" when the stored trajectory cannot be indexed
    blend_steps: int
    region: torch.Tensor  # the rough region on the latent grid [1, 1, h, w]
    tracker: ObjectTracker | None  # tight edits: where the object forms; None repaints the whole region

    def blend(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        """BCG after scheduler step `step`: the remembered latent wherever the edit does not paint."""
        if step >= self.blend_steps:
            return latents
        mask = self.region if self.tracker is None else self.tracker.blend_mask(step, latents, self.remembered[step])
        return blend(latents, self.remembered[step], mask)
