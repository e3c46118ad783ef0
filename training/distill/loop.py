"""The distillation loop: optimise the student against the teacher, checkpoint the adapter, resume a run."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from tqdm import tqdm

from memory import write_atomic
from pipelines.guidance_format import CONFIG_FILE, read_guidance_config
from pipelines.schedulers import make_scheduler

from .. import configs
from ..common import hardware
from .adapter import prepare_student, save_guidance_adapter, student_output
from .config import DistillConfig
from .data import Batch, CleanSource, PromptSampler, TeacherTrajectories, encode_prompts, training_source
from .loss import distillation_loss, validation_error, validation_states
from .rollouts import EditRollouts, prompt_scenes, shapes_world_scenes


def distill(pipeline, out: str | Path, config: DistillConfig, prompts: PromptSampler, *,
            clean: CleanSource | None = None, base_model: str = "", state_dir: str | Path | None = None,
            progress: bool = True, log: Callable[[str], None] = print, shapes_world: bool = False) -> dict:
    """Train (or continue) the guidance adapter of `pipeline`'s UNet and save it to `out`. Returns guidance.json.

    `clean` gives clean (latents, prompt embeds) for "noised"/"mixed"; None uses the teacher's own samples.
    `shapes_world`: edit rollouts ("edits") use shapes-world scenes (training-split objects) instead of `prompts`.
    The pipeline's UNet keeps the live peft adapter afterwards (the teacher is it with adapters disabled).
    """
    out = Path(out)
    if pipeline.is_inpainting_unet:
        raise ValueError("guidance distillation supports text-to-image UNets; this checkpoint has an inpainting UNet")
    if config.background_weights and not (shapes_world and config.data.startswith("edits")):
        raise ValueError("background weights apply to shapes-world edit rollouts (the embedded model or "
                         "--shapes-world, with --data edits or edits+trajectories)")
    run = DistillationRun(pipeline, out, config, Path(state_dir) if state_dir is not None else default_state_dir(out),
                          base_model, log)
    rng = np.random.default_rng(config.seed + run.done)
    torch.manual_seed(config.seed + run.done)
    uncond = encode_prompts(pipeline, [""])
    if config.data.startswith("edits"):
        if shapes_world:
            scenes = partial(shapes_world_scenes, background_weights=config.background_weights)
        else:
            scenes = prompt_scenes(prompts, pipeline.default_size)
        data = EditRollouts(pipeline, scenes, uncond, config, rng, run.learn)
        if config.data == "edits+trajectories":
            data.plain = TeacherTrajectories(pipeline, prompts, uncond, config, rng)
    else:
        data = training_source(pipeline, prompts, uncond, config, rng, clean)
    run.validation = validation_states(pipeline, prompts, uncond, config)
    meta = run.train(data, progress)
    pipeline.denoiser.eval()
    meta = meta or read_guidance_config(out)
    log(f"{out}: {meta['steps']} steps, {meta['minutes']} min, validation relative error {meta['val_rel_error']}")
    return meta


class DistillationRun:
    """One run of `distill`: the student, its optimizer, the step count, and the adapter folder it checkpoints to.

    Creating it attaches the adapter in `out` (resume) or a fresh one, and restores the optimizer state saved at
    the adapter's step when there is one."""

    def __init__(self, pipeline, out: Path, config: DistillConfig, state_dir: Path, base_model: str,
                 log: Callable[[str], None]):
        self.pipeline, self.unet, self.out, self.config = pipeline, pipeline.denoiser, out, config
        self.state_dir, self.base_model = state_dir, base_model
        pipeline.vae.requires_grad_(False)
        pipeline.text_encoder.requires_grad_(False)
        record = prepare_student(self.unet, out, config)
        self.done, self.spent = int(record.get("steps", 0)), float(record.get("minutes", 0.0))
        self.step = self.done
        if config.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()
        self.named = {param: name for name, param in self.unet.named_parameters() if param.requires_grad}
        self.optimizer = torch.optim.AdamW(list(self.named), lr=config.lr, weight_decay=0.0)
        if record:
            resumed = load_optimizer(self.optimizer, self.named, state_dir, self.done)
            log(f"resuming {out} at step {self.done} ({'with' if resumed else 'without'} optimizer state)")
        self.alphas_cumprod = make_scheduler("ddim", pipeline.scheduler.config).alphas_cumprod
        self.prediction_type = pipeline.scheduler.config.prediction_type
        self.validation: Batch | None = None  # set before `train`
        self.losses: list[float] = []
        self.pending: list[float] = []  # losses of edit-rollout calls not yet stepped on
        self.target_steps: float = math.inf
        self.bar = None
        self.started = time.perf_counter()

    def train(self, data, progress: bool) -> dict | None:
        """Step until `steps` are reached or `minutes` run out, checkpointing every `ckpt_minutes` and at the end
        (also when interrupted). Returns the last checkpoint's guidance.json (None if none was written)."""
        config = self.config
        self.started = last_checkpoint = time.perf_counter()
        target_steps = config.steps if config.steps is not None else math.inf
        deadline = self.started + 60.0 * config.minutes if config.minutes is not None else math.inf
        total = None if math.isinf(target_steps) else int(target_steps)
        bar = tqdm(total=total, initial=self.done, desc="distill", unit="step", disable=not progress,
                   dynamic_ncols=True)
        meta = None
        self.target_steps, self.bar = target_steps, bar
        try:
            while self.step < target_steps and time.perf_counter() < deadline:
                if isinstance(data, EditRollouts):
                    before = self.step
                    data.run_scene()  # trains through `learn` at every denoiser call
                    for _ in range(self.step - before if data.plain is not None else 0):
                        if self.step >= target_steps:
                            break
                        self.train_step(data.plain.next())
                else:
                    self.train_step(data.next())
                if time.perf_counter() - last_checkpoint > 60.0 * config.ckpt_minutes:
                    meta = self.checkpoint()
                    bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4g}", val=meta["val_rel_error"]["mean"])
                    last_checkpoint = time.perf_counter()
        finally:
            bar.close()
            if self.step > self.done or not (self.out / CONFIG_FILE).is_file():
                meta = self.checkpoint()
        return meta

    def train_step(self, batch: Batch) -> None:
        """One optimizer step on a batch of stored states."""
        config = self.config
        pred = student_output(self.pipeline.family, batch.latents, batch.t, batch.cond, batch.scales, config.embedding_dim,
                              config.lora_gain)
        loss = self.loss(pred, batch.target, batch.latents, batch.t)
        loss.backward()
        self.losses.append(loss.item())
        self.optimizer_step()

    def learn(self, pred: torch.Tensor, target: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> None:
        """One denoiser call of an edit rollout: its gradient is accumulated, a step taken every `accumulate` calls
        (none once the run's steps are reached: the scene then just finishes)."""
        if self.step >= self.target_steps:
            return
        loss = self.loss(pred, target, sample, t)
        (loss / self.config.accumulate).backward()
        self.pending.append(loss.item())
        if len(self.pending) == self.config.accumulate:
            self.losses.append(float(np.mean(self.pending)))
            self.pending = []
            self.optimizer_step()

    def loss(self, pred, target, sample, t) -> torch.Tensor:
        return distillation_loss(pred, target, self.config.loss, sample=sample, alphas=self.alphas_cumprod[t.cpu()],
                                 prediction_type=self.prediction_type)

    def optimizer_step(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step - self.done, self.target_steps - self.done,
                                        time.perf_counter() - self.started)
        torch.nn.utils.clip_grad_norm_(list(self.named), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{np.mean(self.losses[-20:]):.4g}")

    def checkpoint(self) -> dict:
        """Validate, write the adapter (atomically) and the optimizer state; returns the adapter's guidance.json."""
        config, scheduler_config = self.config, self.pipeline.scheduler.config
        self.unet.eval()
        val = validation_error(self.pipeline.family, self.validation, config.embedding_dim, config.lora_gain,
                               scheduler_config=scheduler_config)
        self.unet.train()
        meta = {
            "base_model": self.base_model, "family": self.pipeline.family.name,
            "scale_range": [config.min_scale, config.max_scale], "lora_gain": config.lora_gain, "loss": config.loss,
            "steps": self.step, "minutes": round(self.spent + (time.perf_counter() - self.started) / 60, 2),
            "mode": config.mode, "fast_steps": config.fast_steps if config.mode == "fast" else None,
            "teacher_steps": config.teacher_steps if config.mode == "fast" else None, "data": config.data,
            "lr": config.lr, "batch_size": config.batch_size, "student_rollouts": config.student_rollouts,
            "accumulate": config.accumulate, "call_sampling": config.call_sampling,
            "background_weights": dict(config.background_weights),
            "sample_steps": list(config.sample_steps), "hardware": hardware(),
            "prediction_type": scheduler_config.get("prediction_type", "epsilon"),
            "val_rel_error": val, "last_loss": round(float(np.mean(self.losses[-50:])), 6) if self.losses else None,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        saved = save_guidance_adapter(self.unet, self.out, **meta)
        save_optimizer(self.optimizer, self.named, self.state_dir, self.step)
        return read_guidance_config(saved)


def learning_rate(config: DistillConfig, step: int, total: float, seconds: float) -> float:
    """Linear warm-up, then cosine decay to a tenth over this run (by steps or minutes, whichever ends first).

    Why a decay: assets/embedded/MODEL_CARD.md (at a constant rate the validation error stalled).
    """
    warm = min(1.0, (step + 1) / max(1, config.warmup))
    progress = min(1.0, max(step / total if math.isfinite(total) and total > 0 else 0.0,
                            seconds / (60.0 * config.minutes) if config.minutes else 0.0))
    return config.lr * warm * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------------------------- optimizer state
def default_state_dir(out: Path) -> Path:
    """runs/distill/<name>-<hash of the output path>: optimizer state stays out of the shipped folder."""
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    return configs.RUNS_DIR / "distill" / f"{Path(out).name}-{digest}"


def save_optimizer(optimizer, names: dict, folder: Path, step: int) -> None:
    """AdamW moments as safetensors (no pickle) + the step they belong to."""
    tensors = {}
    for param, name in names.items():
        for key, value in optimizer.state.get(param, {}).items():
            tensors[f"{name}::{key}"] = torch.as_tensor(value).detach().to("cpu").contiguous()
    write_atomic(folder / "optimizer.safetensors", safetensors.torch.save(tensors), parents=True)
    write_atomic(folder / "optimizer.json", (json.dumps({"step": step}) + "\n").encode())


def load_optimizer(optimizer, names: dict, folder: Path, step: int) -> bool:
    """Restore the moments saved at `step`; False (fresh moments) when there are none for this step."""
    meta, path = folder / "optimizer.json", folder / "optimizer.safetensors"
    if not (meta.is_file() and path.is_file()) or json.loads(meta.read_text()).get("step") != step:
        return False
    tensors = safetensors.torch.load_file(str(path))
    for param, name in names.items():
        state = {key.split("::", 1)[1]: value.to(param.device) for key, value in tensors.items()
                 if key.split("::", 1)[0] == name}
        if state:
            optimizer.state[param] = state
    return True
