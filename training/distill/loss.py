"""What distillation minimises, and how far the student is from the teacher on fixed validation states."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.guidance_format import LORA_GAIN, as_epsilon, as_velocity, as_x0
from pipelines.schedulers import make_scheduler

from .adapter import student_output
from .config import DistillConfig
from .data import Batch, PromptSampler, TeacherTrajectories

VALIDATION_SCALES = (2.0, 4.0, 7.5)
VALIDATION_STEPS = 20  # the pipeline's default step count


def distillation_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "relative", *, sample=None,
                      alphas=None, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample squared error, averaged; "relative*" divide each by its target's mean square.

    "relative-eps" / "relative-v" / "relative-x0" compare in that space: they need the UNet input `sample` and
    the batch's alphas_cumprod to convert the output.
    """
    convert = {"relative-eps": as_epsilon, "relative-v": as_velocity, "relative-x0": as_x0}.get(kind)
    if convert is not None:
        pred = convert(pred, sample, alphas, prediction_type)
        target = convert(target, sample, alphas, prediction_type)
    squared = (pred.float() - target.float()).square().flatten(1).mean(1)
    if kind.startswith("relative"):
        squared = squared / target.float().square().flatten(1).mean(1).clamp_min(1e-6)
    return squared.mean()


def relative_error(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row ||student - target|| / ||target||."""
    diff = (student.float() - target.float()).flatten(1).norm(dim=1)
    return diff / target.float().flatten(1).norm(dim=1).clamp_min(1e-8)


def validation_states(pipeline, prompts: PromptSampler, uncond, config: DistillConfig) -> Batch:
    """Fixed teacher trajectories (VALIDATION_STEPS DDIM steps) at VALIDATION_SCALES: what inference meets.

    For a fast adapter, the states where its steps start (the teacher's trajectory cut into `fast_steps`
    segments), each with the output that lands one student step on the teacher's latent at the segment's end.
    """
    rng = np.random.default_rng(12345)
    texts = prompts(rng, config.val_prompts)
    source = TeacherTrajectories(pipeline, prompts, uncond, config, rng)
    fast = config.mode == "fast"
    steps = config.teacher_steps if fast else VALIDATION_STEPS
    source.keep_finals = fast
    states = []
    for index, scale in enumerate(VALIDATION_SCALES):
        run = source.run(texts, [scale] * len(texts), steps, seed=1000 + index, trailing=fast)
        if not fast:
            states += run
            continue
        finals = torch.stack([latent for latent, _ in source.finals[-len(texts):]])
        states += segment_states(pipeline, run, finals, config.fast_steps)
    return Batch.cat(states)


def segment_states(pipeline, run: list[Batch], finals: torch.Tensor, fast_steps: int) -> list[Batch]:
    """A teacher run's states at the start of each of `fast_steps` segments, the target being the output that
    reaches the next segment's first state (the run's final latent after the last) in one DDIM step."""
    from .rollouts import output_reaching

    scheduler = make_scheduler("ddim", pipeline.scheduler.config)
    length = len(run) // fast_steps
    span = pipeline.scheduler.config.num_train_timesteps // fast_steps
    states = []
    for k in range(fast_steps):
        start = run[k * length]
        end = run[(k + 1) * length].latents if k + 1 < fast_steps else finals
        t = int(start.t[0])
        target = output_reaching(end.float(), start.latents.float(), t, t - span, scheduler.alphas_cumprod,
                                 scheduler.final_alpha_cumprod, pipeline.scheduler.config.prediction_type)
        states.append(Batch(start.latents, start.t, start.cond, start.scales, target))
    return states


@torch.no_grad()
def validation_error(family, states: Batch, embedding_dim: int, gain_rule: str = LORA_GAIN, chunk: int = 32,
                     scheduler_config=None) -> dict:
    """Mean relative error of the student on the validation states, per scale and overall.

    With `scheduler_config`: in eps space (the earlier adapters' metric), plus the errors of v ("v", what the
    loss sees), of x0 ("x0": the clean latent each step predicts, where high-noise errors show) and of the raw
    output ("output"), and x0's error step by step ("x0_by_step": one list per scale, high noise first).
    Without it: the raw output's error only.
    """
    outputs = []
    for i in range(0, states.latents.shape[0], chunk):
        part = slice(i, i + chunk)
        outputs.append(student_output(family, states.latents[part], states.t[part], states.cond[part],
                                      states.scales[part], embedding_dim, gain_rule).float())
    out = torch.cat(outputs)
    output_error = relative_error(out, states.target)
    if scheduler_config is None:
        return _by_scale(output_error, states.scales)
    alphas = make_scheduler("ddim", scheduler_config).alphas_cumprod[states.t.cpu()]
    kind, sample = scheduler_config["prediction_type"], states.latents

    def error_in(space):
        return relative_error(space(out, sample, alphas, kind), space(states.target, sample, alphas, kind))

    x0_error = error_in(as_x0)
    return _by_scale(error_in(as_epsilon), states.scales) | {
        "v": _by_scale(error_in(as_velocity), states.scales), "x0": _by_scale(x0_error, states.scales),
        "output": _by_scale(output_error, states.scales), "x0_by_step": _by_step(x0_error, states)}


def _by_scale(values: torch.Tensor, scales: torch.Tensor) -> dict:
    """Mean of per-row `values` at each validation scale, and overall (4 decimals)."""
    values, scales = values.cpu(), scales.cpu()
    result = {f"s={scale:g}": round(float(values[scales == scale].mean()), 4) for scale in VALIDATION_SCALES}
    result["mean"] = round(float(values.mean()), 4)
    return result


def _by_step(values: torch.Tensor, states: Batch) -> dict:
    """Mean of per-row `values` at each timestep of each validation scale, high noise first (3 decimals)."""
    values, scales, t = values.cpu(), states.scales.cpu(), states.t.cpu()
    result = {}
    for scale in VALIDATION_SCALES:
        rows = scales == scale
        steps = sorted({int(v) for v in t[rows]}, reverse=True)
        result[f"s={scale:g}"] = [round(float(values[rows & (t == step)].mean()), 3) for step in steps]
    return result
