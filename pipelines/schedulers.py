"""The schedulers a user can pick by name, built from the checkpoint's own scheduler config."""

from __future__ import annotations

from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler)

from . import flow_matching

# Only deterministic samplers: an edit must be reproducible from its seed, and BCG indexes the
# stored trajectory by step, which ancestral samplers would make depend on fresh noise.
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    # SD3 and FLUX (flow matching): the Euler sampler their pipelines use, on the checkpoint's shifted sigmas
    "flow-euler": (FlowMatchEulerDiscreteScheduler, {"stochastic_sampling": False}),
}


def make_scheduler(name: str, base_config, **changes):
    """A fresh scheduler of kind `name` (one per call, so concurrent edits never share state); `changes` override
    the checkpoint's config (a fast adapter's trailing timestep spacing)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base_config, **{**overrides, **changes})


def schedule_fingerprint(scheduler) -> tuple[str, tuple[int, ...]]:
    """(scheduler class, timesteps): two edits can share a stored trajectory only if these match.

    Flow-matching timesteps are fractions; they are recorded in thousandths (flow_matching.flow_fingerprint).
    """
    if flow_matching.is_flow_matching(scheduler):
        return flow_matching.flow_fingerprint(scheduler)
    return type(scheduler).__name__, tuple(int(t) for t in scheduler.timesteps.tolist())


def initial_sigma(scheduler) -> float:
    """The scale of x_T relative to unit noise (flow matching starts from pure noise: 1)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def scale_model_input(scheduler, sample, timestep):
    """The denoiser's input at `timestep`; flow-matching samplers have no scaling to apply."""
    if hasattr(scheduler, "scale_model_input"):
        return scheduler.scale_model_input(sample, timestep)
    return sample
