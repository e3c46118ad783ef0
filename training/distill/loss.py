"""What distillation minimises, and how far the student is from the teacher on fixed validation states."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.guidance_format import LORA_GAIN, as_epsilon
from pipelines.schedulers import make_scheduler

from .adapter import student_output
from .config import DistillConfig
from .data import Batch, PromptSampler, TeacherTrajectories

VALIDATION_SCALES = (2.0, 4.0, 7.5)
VALIDATION_STEPS = 20  # the pipeline's default step count


def distillation_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "relative", *, sample=None,
                      alphas=None, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample squared error, averaged; "relative*" divide each by its target's mean square.

    "relative-eps" needs the UNet input `sample` and the batch's alphas_cumprod to convert v to eps.
    """
    if kind == "relative-eps":
        pred = as_epsilon(pred, sample, alphas, prediction_type)
        target = as_epsilon(target, sample, alphas, prediction_type)
    squared = (pred.float() - target.float()).square().flatten(1).mean(1)
    if kind.startswith("relative"):
        squared = squared / target.float().square().flatten(1).mean(1).clamp_min(1e-6)
    return squared.mean()


def relative_error(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row ||student - target|| / ||target||."""
    diff = (student.float() - target.float()).flatten(1).norm(dim=1)
    return diff / target.float().flatten(1).norm(dim=1).clamp_min(1e-8)


def validation_states(pipeline, prompts: PromptSampler, uncond, config: DistillConfig) -> Batch:
    """Fixed teacher trajectories (VALIDATION_STEPS DDIM steps) at VALIDATION_SCALES: what inference meets."""
    rng = np.random.default_rng(12345)
    texts = prompts(rng, config.val_prompts)
    source = TeacherTrajectories(pipeline, prompts, uncond, config, rng)
    states = []
    for index, scale in enumerate(VALIDATION_SCALES):
        states += source.run(texts, [scale] * len(texts), VALIDATION_STEPS, seed=1000 + index)
    return Batch.cat(states)


@torch.no_grad()
def validation_error(family, states: Batch, embedding_dim: int, gain_rule: str = LORA_GAIN, chunk: int = 32,
                     scheduler_config=None) -> dict:
    """Mean relative error of the student on the validation states, per scale and overall.

    In eps space (derived from v for v-prediction models, see guidance_format.as_epsilon) when `scheduler_config`
    is given, plus the raw UNet output's error under "output"; else the raw output's error only.
    """
    errors, output_errors = [], []
    for i in range(0, states.latents.shape[0], chunk):
        part = slice(i, i + chunk)
        out = student_output(family, states.latents[part], states.t[part], states.cond[part], states.scales[part],
                             embedding_dim, gain_rule)
        output_errors.append(relative_error(out, states.target[part]))
        if scheduler_config is not None:
            alphas = make_scheduler("ddim", scheduler_config).alphas_cumprod[states.t[part].cpu()]
            kind, sample = scheduler_config["prediction_type"], states.latents[part]
            errors.append(relative_error(as_epsilon(out, sample, alphas, kind),
                                         as_epsilon(states.target[part], sample, alphas, kind)))
    if scheduler_config is None:
        return _by_scale(output_errors, states.scales)
    return _by_scale(errors, states.scales) | {"output": _by_scale(output_errors, states.scales)}


def _by_scale(values: list[torch.Tensor], scales: torch.Tensor) -> dict:
    """Mean of per-row `values` at each validation scale, and overall (4 decimals)."""
    values, scales = torch.cat(values).cpu(), scales.cpu()
    result = {f"s={scale:g}": round(float(values[scales == scale].mean()), 4) for scale in VALIDATION_SCALES}
    result["mean"] = round(float(values.mean()), 4)
    return result
