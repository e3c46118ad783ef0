"""Guidance distillation: train a guidance adapter so one UNet pass per step does what CFG does with two.

    python -m training distill [--model embedded|FOLDER|HUB_ID] [--out DIR] [--steps N] [--minutes M]
                               [--rank R] [--data trajectories|noised|mixed] [--prompts FILE] ...

Student = the UNet + a LoRA (attention projections by default) whose branch is multiplied by s - 1,
+ a zero-initialised projection of the guidance scale into the timestep embedding
(pipelines/guidance.py); both start at zero, so the student starts as the teacher's conditional
pass. Teacher = the same UNet with the LoRA disabled and no scale embedding. Target =
uncond + s * (cond - uncond), s ~ U[1, max_scale] per sample, the unconditional prompt "" (so
distilled mode has no negative prompt). Loss: squared error of the noise prediction (eps; derived from
v for v-prediction models), divided per sample by the target's mean square ("relative-eps": the error
the benchmark reports; "relative" does the same on the raw UNet output; --loss mse neither).

Training states (where the UNet is evaluated):
- "trajectories": the teacher's own CFG sampling runs (DDIM, a random step count and scale per
  batch of prompts). Each teacher evaluation gives a state AND its target, so no images are needed,
  and the student learns exactly the states it meets at inference.
- "noised": clean latents forward-noised to a random t (Meng et al.; the seed paper). Clean latents
  are VAE-encoded shapes-world scenes for the embedded model, or the teacher's own CFG samples.
- "mixed": alternate batches of both.
Prompts: shapes-world captions and object prompts for the embedded model, else --prompts FILE.

Resumable: rerun the same command and it continues from the adapter in --out (and the optimizer
state in --state); --steps is the total to reach. The adapter folder is rewritten atomically every
--ckpt-minutes and at the end. CUDA is used when present.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from memory import write_atomic
from pipelines import guidance as G
from pipelines.loading import EMBEDDED_MODEL_DIR, load_pipeline, resolve_model
from pipelines.schedulers import make_scheduler

from . import configs as C
from .common import hardware

DATA_MODES = ("trajectories", "noised", "mixed")
# "mse": plain MSE, dominated by high scales (the target grows with s); "relative": each sample's squared
# error divided by its target's mean square, so every scale and timestep counts alike.
# "relative-eps": the same in eps space (eps derived from v for v-prediction models): the space the error is
# reported in; for v models it puts the effort on low noise levels, where eps-space errors are largest.
LOSSES = ("relative-eps", "relative", "mse")
VALIDATION_SCALES = (2.0, 4.0, 7.5)
VALIDATION_STEPS = 20  # the pipeline's default step count


@dataclass
class DistillConfig:
    """How an adapter is trained. One default per number, documented here."""

    steps: int | None = 2000  # total optimizer steps to reach (None: until `minutes` run out)
    minutes: float | None = None  # wall-clock budget of this run
    rank: int = 64  # the embedded model's adapter: 13 MB; rank 16 reached a higher error in the same time
    alpha: float | None = None  # LoRA alpha; None = rank (scale 1)
    targets: tuple[str, ...] = G.LORA_TARGETS
    data: str = "trajectories"
    loss: str = "relative-eps"  # see LOSSES
    lora_gain: str = G.LORA_GAIN  # the LoRA branch times s - 1 (see pipelines/guidance.py)
    batch_size: int = 8
    lr: float = 5e-4
    warmup: int = 50  # steps of linear lr warm-up (each run)
    max_scale: float = G.MAX_SCALE  # s ~ U[1, max_scale]; a narrower range fits s = 7.5 better
    embedding_dim: int = G.EMBEDDING_DIM
    sample_steps: tuple[int, int] = (10, 30)  # DDIM step counts of teacher trajectories (inclusive range)
    trajectories: int = 32  # teacher runs generated together; batches mix their states (scales, prompts, steps)
    pool: int = 256  # clean latents kept for "noised" (refreshed as training goes)
    ckpt_minutes: float = 5.0
    val_prompts: int = 4  # validation: teacher trajectories of this many prompts x VALIDATION_SCALES
    seed: int = 0
    fresh: bool = False  # ignore an adapter already in `out` and start from zero
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.data not in DATA_MODES:
            raise ValueError(f"data must be one of {DATA_MODES}, got {self.data!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lora_gain not in G.LORA_GAINS:
            raise ValueError(f"lora_gain must be one of {G.LORA_GAINS}, got {self.lora_gain!r}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps, minutes or both")
        if self.max_scale <= 1.0:
            raise ValueError(f"max_scale must be > 1, got {self.max_scale}")
        if self.rank < 1 or self.batch_size < 1:
            raise ValueError("rank and batch_size must be >= 1")


# ----------------------------------------------------------------------------------------------- prompts
PromptSampler = Callable[[np.random.Generator, int], list[str]]


def shapes_world_prompts(rng: np.random.Generator, n: int) -> list[str]:
    """What the embedded model is asked at inference: scene captions (backgrounds), object prompts (edits)."""
    from benchmark import shapes_world as sw

    prompts = []
    for _ in range(n):
        scene = sw.sample_scene(rng, n_objects=(0, 3), split="train")
        u = rng.random()
        if scene.objects and u < 0.4:
            obj = scene.objects[int(rng.integers(len(scene.objects)))]
            prompts.append(sw.object_prompt(obj.colour, obj.shape))
        else:
            prompts.append(scene.caption)
    return prompts


def file_prompts(path: str | Path) -> PromptSampler:
    """Prompts from a text file, one per line (blank lines and lines starting with # are skipped)."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{path} holds no prompts (one per line)")
    return list_prompts(prompts)


def list_prompts(prompts: Sequence[str]) -> PromptSampler:
    prompts = list(prompts)
    return lambda rng, n: [prompts[int(i)] for i in rng.integers(0, len(prompts), n)]


# ----------------------------------------------------------------------------------------------- teacher / student
@torch.no_grad()
def encode_prompts(pipeline, prompts: Sequence[str]) -> torch.Tensor:
    tokens = pipeline.tokenizer(list(prompts), padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    return pipeline.text_encoder(tokens.input_ids.to(pipeline.text_encoder.device))[0].to(pipeline.unet.dtype)


@torch.no_grad()
def teacher_guided(unet, latents, t, cond, uncond, scales) -> torch.Tensor:
    """CFG output of the teacher (adapter off, no scale embedding): uncond + s (cond - uncond), one s per row."""
    batch = latents.shape[0]
    adapter = getattr(unet, "peft_config", {}).get(G.ADAPTER_NAME) is not None
    if adapter:
        unet.disable_adapters()
    try:
        out = unet(torch.cat([latents, latents]), torch.cat([t, t]),
                   encoder_hidden_states=torch.cat([uncond.expand(batch, -1, -1), cond])).sample
    finally:
        if adapter:
            unet.enable_adapters()
    uncond_out, cond_out = out.float().chunk(2)
    return uncond_out + scales.float().view(-1, 1, 1, 1) * (cond_out - uncond_out)


def student_output(unet, latents, t, cond, scales, embedding_dim: int, gain_rule: str = G.LORA_GAIN) -> torch.Tensor:
    """One pass with the adapter on (its branch times g(s)) and s - 1 embedded into the timestep embedding."""
    timestep_cond = G.guidance_embedding(scales, embedding_dim, device=latents.device, dtype=latents.dtype)
    with G.scaled_lora(unet, G.lora_gain(scales, gain_rule)):
        return unet(latents, t, encoder_hidden_states=cond, timestep_cond=timestep_cond).sample


def distillation_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "relative", *, sample=None,
                      alphas=None, prediction_type: str = "epsilon") -> torch.Tensor:
    """Per-sample squared error, averaged; "relative*" divide each by its target's mean square.

    "relative-eps" needs the UNet input `sample` and the batch's alphas_cumprod to convert v to eps.
    """
    if kind == "relative-eps":
        pred = G.as_epsilon(pred, sample, alphas, prediction_type)
        target = G.as_epsilon(target, sample, alphas, prediction_type)
    squared = (pred.float() - target.float()).square().flatten(1).mean(1)
    if kind.startswith("relative"):
        squared = squared / target.float().square().flatten(1).mean(1).clamp_min(1e-6)
    return squared.mean()


def relative_error(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row ||student - target|| / ||target||."""
    diff = (student.float() - target.float()).flatten(1).norm(dim=1)
    return diff / target.float().flatten(1).norm(dim=1).clamp_min(1e-8)


# ----------------------------------------------------------------------------------------------- training states
@dataclass
class Batch:
    latents: torch.Tensor  # the UNet's input (already scaled by the scheduler)
    t: torch.Tensor  # [B] timesteps
    cond: torch.Tensor  # [B, L, D] prompt embeddings
    scales: torch.Tensor  # [B] guidance scales
    target: torch.Tensor  # [B, C, h, w] teacher CFG output (float32)

    def rows(self, index) -> Batch:
        return Batch(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def cat(items: Sequence[Batch]) -> Batch:
        return Batch(*(torch.cat([getattr(b, f.name) for b in items]) for f in fields(Batch)))


class TeacherTrajectories:
    """States of the teacher's own CFG sampling runs, with their targets, served in shuffled batches."""

    def __init__(self, pipeline, prompts: PromptSampler, uncond: torch.Tensor, config: DistillConfig,
                 rng: np.random.Generator):
        self.pipeline, self.prompts, self.uncond, self.config, self.rng = pipeline, prompts, uncond, config, rng
        self.buffer: list[Batch] = []
        self.keep_finals = False  # set by teacher_sample_latents, which consumes them
        self.finals: list[tuple[torch.Tensor, torch.Tensor]] = []  # (clean latent, prompt embeds) of each run

    def run(self, prompts: list[str], scales: Sequence[float], steps: int, seed: int) -> list[Batch]:
        """Sample `prompts` with the teacher at `scales` (one per prompt); one Batch per step."""
        pipe = self.pipeline
        device = pipe.unet.device
        sampler = make_scheduler("ddim", pipe.scheduler.config)
        sampler.set_timesteps(steps, device=device)
        size = int(pipe.unet.config.sample_size)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        shape = (len(prompts), pipe.latent_channels, size, size)
        latents = (torch.randn(shape, generator=generator) * sampler.init_noise_sigma).to(device, pipe.unet.dtype)
        cond = encode_prompts(pipe, prompts)
        scale = torch.tensor(list(scales), dtype=torch.float32, device=device)
        states = []
        for t in sampler.timesteps:
            model_input = sampler.scale_model_input(latents, t)
            t_rows = t.reshape(1).expand(len(prompts)).to(device)
            guided = teacher_guided(pipe.unet, model_input, t_rows, cond, self.uncond, scale)
            states.append(Batch(model_input.detach(), t_rows.clone(), cond, scale, guided))
            latents = sampler.step(guided.to(latents.dtype), t, latents).prev_sample
        if self.keep_finals:
            self.finals.extend(zip(latents.detach().clone(), cond.clone()))
        return states

    def refill(self) -> None:
        cfg = self.config
        n = cfg.trajectories
        steps = int(self.rng.integers(cfg.sample_steps[0], cfg.sample_steps[1] + 1))
        scales = self.rng.uniform(G.MIN_SCALE, cfg.max_scale, n)
        states = self.run(self.prompts(self.rng, n), scales, steps, int(self.rng.integers(2**31)))
        merged = Batch.cat(states)
        order = torch.from_numpy(self.rng.permutation(merged.latents.shape[0]))
        self.buffer = [merged.rows(order[i:i + cfg.batch_size]) for i in range(0, len(order), cfg.batch_size)]

    def next(self) -> Batch:
        pieces, rows = [], 0
        while rows < self.config.batch_size:
            if not self.buffer:
                self.refill()
            piece = self.buffer.pop()
            pieces.append(piece)
            rows += piece.latents.shape[0]
        return Batch.cat(pieces).rows(slice(0, self.config.batch_size))


class ForwardNoised:
    """Clean latents noised to a random training timestep; the teacher computes the target there.

    `clean` returns (latents [n, C, h, w], prompt embeds [n, L, D]) of fresh clean examples.
    """

    def __init__(self, pipeline, clean: Callable[[int], tuple[torch.Tensor, torch.Tensor]], uncond: torch.Tensor,
                 config: DistillConfig, rng: np.random.Generator, refresh: int):
        self.pipeline, self.clean, self.uncond, self.config, self.rng = pipeline, clean, uncond, config, rng
        self.refresh = refresh
        self.latents, self.cond = clean(config.pool)
        self.noise_schedule = pipeline.scheduler

    def next(self) -> Batch:
        cfg, device = self.config, self.pipeline.unet.device
        if self.refresh:
            fresh_latents, fresh_cond = self.clean(self.refresh)
            slots = torch.from_numpy(self.rng.choice(cfg.pool, self.refresh, replace=False))
            self.latents[slots], self.cond[slots] = fresh_latents, fresh_cond
        idx = torch.from_numpy(self.rng.choice(cfg.pool, cfg.batch_size, replace=cfg.batch_size > cfg.pool))
        x0, cond = self.latents[idx], self.cond[idx]
        generator = torch.Generator("cpu").manual_seed(int(self.rng.integers(2**31)))
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        t = torch.from_numpy(self.rng.integers(0, self.noise_schedule.config.num_train_timesteps, cfg.batch_size))
        t = t.to(device)
        noisy = self.noise_schedule.add_noise(x0, noise, t)
        scales = torch.from_numpy(self.rng.uniform(G.MIN_SCALE, cfg.max_scale, cfg.batch_size)).float().to(device)
        return Batch(noisy, t, cond, scales, teacher_guided(self.pipeline.unet, noisy, t, cond, self.uncond, scales))


class Alternating:
    """"mixed": one batch from each source in turn."""

    def __init__(self, *sources):
        self.sources, self.count = sources, 0

    def next(self) -> Batch:
        self.count += 1
        return self.sources[self.count % len(self.sources)].next()


def shapes_world_latents(pipeline, rng: np.random.Generator) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Clean examples for the embedded model: VAE-encoded shapes-world scenes and their captions."""
    from benchmark import shapes_world as sw

    from .common import to_tensor
    from .train_unet import objects_caption

    size = pipeline.default_size[0]

    @torch.no_grad()
    def clean(n: int):
        scenes = [sw.sample_scene(rng, size=size, n_objects=(0, 3), split="train") for _ in range(n)]
        captions = [objects_caption(s.objects) if s.objects and rng.random() < 0.4 else s.caption for s in scenes]
        pixels = to_tensor([s.image for s in scenes]).to(pipeline.vae.device, pipeline.vae.dtype)
        latents = pipeline.vae.encode(pixels).latent_dist.mode() * pipeline.vae.config.scaling_factor
        return latents.to(pipeline.unet.dtype), encode_prompts(pipeline, captions)

    return clean


def teacher_sample_latents(trajectories: TeacherTrajectories) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Clean examples for any checkpoint: the teacher's own CFG samples (no image data needed)."""
    trajectories.keep_finals = True

    def clean(n: int):
        while len(trajectories.finals) < n:
            trajectories.refill()
        taken, trajectories.finals = trajectories.finals[:n], trajectories.finals[n:]
        return torch.stack([z for z, _ in taken]), torch.stack([c for _, c in taken])

    return clean


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
def validation_error(unet, states: Batch, embedding_dim: int, gain_rule: str = G.LORA_GAIN, chunk: int = 32,
                     scheduler_config=None) -> dict:
    """Mean relative error of the student on the validation states, per scale and overall.

    In eps space (derived from v for v-prediction models, see guidance.as_epsilon) when `scheduler_config` is
    given, plus the raw UNet output's error under "output"; else the raw output's error only.
    """
    errors, output_errors = [], []
    for i in range(0, states.latents.shape[0], chunk):
        part = slice(i, i + chunk)
        out = student_output(unet, states.latents[part], states.t[part], states.cond[part], states.scales[part],
                             embedding_dim, gain_rule)
        output_errors.append(relative_error(out, states.target[part]))
        if scheduler_config is not None:
            alphas = make_scheduler("ddim", scheduler_config).alphas_cumprod[states.t[part].cpu()]
            kind, sample = scheduler_config["prediction_type"], states.latents[part]
            errors.append(relative_error(G.as_epsilon(out, sample, alphas, kind),
                                         G.as_epsilon(states.target[part], sample, alphas, kind)))
    scales = states.scales.cpu()

    def summary(values) -> dict:
        values = torch.cat(values).cpu()
        result = {f"s={scale:g}": round(float(values[scales == scale].mean()), 4) for scale in VALIDATION_SCALES}
        result["mean"] = round(float(values.mean()), 4)
        return result

    if scheduler_config is None:
        return summary(output_errors)
    return summary(errors) | {"output": summary(output_errors)}


# ----------------------------------------------------------------------------------------------- optimizer state
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
    tensors = load_file(str(path))
    for param, name in names.items():
        state = {key.split("::", 1)[1]: value.to(param.device) for key, value in tensors.items()
                 if key.split("::", 1)[0] == name}
        if state:
            optimizer.state[param] = state
    return True


def default_state_dir(out: Path) -> Path:
    """runs/distill/<name>-<hash of the output path>: optimizer state stays out of the shipped folder."""
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:8]
    return C.RUNS_DIR / "distill" / f"{Path(out).name}-{digest}"


# ----------------------------------------------------------------------------------------------- the loop
def prepare_student(unet, out: Path, config: DistillConfig) -> dict:
    """Attach a trainable adapter: the one in `out` (resume) or a fresh zero-initialised one. Returns its record."""
    unet.requires_grad_(False)
    record = {}
    if not config.fresh and (out / G.CONFIG_FILE).is_file():
        record = G.read_guidance_config(out)
        saved = (int(record["rank"]), int(record["embedding_dim"]), record.get("lora_gain", G.LORA_GAIN))
        asked = (config.rank, config.embedding_dim, config.lora_gain)
        if saved != asked:
            raise ValueError(f"{out} holds an adapter with (rank, embedding size, LoRA gain) {saved}; this run asks "
                             f"for {asked}: pass the same, or --fresh to start over")
        G.attach_guidance_adapter(unet, out)
    else:
        G.add_guidance_projection(unet, config.embedding_dim)
        unet.add_adapter(G.lora_config(config.rank, config.targets, config.alpha), adapter_name=G.ADAPTER_NAME)
    unet.set_adapter(G.ADAPTER_NAME)
    for name, param in unet.named_parameters():
        if "lora_" in name or name.startswith("time_embedding.cond_proj"):
            param.requires_grad_(True)  # add_adapter froze the projection with the rest
            param.data = param.data.float()  # trainable weights stay float32 (the base may be fp16)
    return record


def learning_rate(config: DistillConfig, step: int, total: float, seconds: float) -> float:
    """Linear warm-up, then cosine decay to a tenth over this run (by steps or minutes, whichever ends first).

    Measured on the embedded model: at a constant rate the validation error stalls within 5 minutes.
    """
    warm = min(1.0, (step + 1) / max(1, config.warmup))
    progress = min(1.0, max(step / total if math.isfinite(total) and total > 0 else 0.0,
                            seconds / (60.0 * config.minutes) if config.minutes else 0.0))
    return config.lr * warm * (0.1 + 0.45 * (1.0 + math.cos(math.pi * progress)))


def distill(pipeline, out: str | Path, config: DistillConfig, prompts: PromptSampler, *,
            clean: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None, base_model: str = "",
            state_dir: str | Path | None = None, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or continue) the guidance adapter of `pipeline`'s UNet and save it to `out`. Returns guidance.json.

    `clean` gives clean (latents, prompt embeds) for "noised"/"mixed"; None uses the teacher's own samples.
    The pipeline's UNet keeps the live peft adapter afterwards (the teacher is it with adapters disabled).
    """
    out = Path(out)
    state_dir = Path(state_dir) if state_dir is not None else default_state_dir(out)
    unet = pipeline.unet
    device = unet.device
    if pipeline.is_inpainting_unet:
        raise ValueError("guidance distillation supports text-to-image UNets; this checkpoint has an inpainting UNet")
    pipeline.vae.requires_grad_(False)
    pipeline.text_encoder.requires_grad_(False)
    record = prepare_student(unet, out, config)
    done = int(record.get("steps", 0))
    spent = float(record.get("minutes", 0.0))
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()

    named = {param: name for name, param in unet.named_parameters() if param.requires_grad}
    optimizer = torch.optim.AdamW(list(named), lr=config.lr, weight_decay=0.0)
    resumed = load_optimizer(optimizer, named, state_dir, done) if record else False
    if record:
        log(f"resuming {out} at step {done} ({'with' if resumed else 'without'} optimizer state)")

    rng = np.random.default_rng(config.seed + done)
    torch.manual_seed(config.seed + done)
    uncond = encode_prompts(pipeline, [""])
    trajectories = TeacherTrajectories(pipeline, prompts, uncond, config, rng)
    if config.data == "trajectories":
        data = trajectories
    else:
        source = clean or teacher_sample_latents(trajectories)
        refresh = max(1, config.batch_size // 4) if clean is not None else 0
        noised = ForwardNoised(pipeline, source, uncond, config, rng, refresh)
        data = noised if config.data == "noised" else Alternating(noised, trajectories)
    validation = validation_states(pipeline, prompts, uncond, config)
    alphas_cumprod = make_scheduler("ddim", pipeline.scheduler.config).alphas_cumprod
    prediction_type = pipeline.scheduler.config.prediction_type

    started, last_ckpt = time.perf_counter(), time.perf_counter()
    target_steps = config.steps if config.steps is not None else math.inf
    deadline = started + 60.0 * config.minutes if config.minutes is not None else math.inf
    losses: list[float] = []
    step = done

    def checkpoint() -> dict:
        unet.eval()
        val = validation_error(unet, validation, config.embedding_dim, config.lora_gain,
                               scheduler_config=pipeline.scheduler.config)
        unet.train()
        meta = {
            "base_model": base_model, "scale_range": [G.MIN_SCALE, config.max_scale], "lora_gain": config.lora_gain,
            "loss": config.loss, "steps": step, "minutes": round(spent + (time.perf_counter() - started) / 60, 2),
            "data": config.data, "lr": config.lr, "batch_size": config.batch_size,
            "sample_steps": list(config.sample_steps), "hardware": hardware(),
            "prediction_type": pipeline.scheduler.config.get("prediction_type", "epsilon"),
            "val_rel_error": val, "last_loss": round(float(np.mean(losses[-50:])), 6) if losses else None,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        saved = G.save_guidance_adapter(unet, out, **meta)
        meta = G.read_guidance_config(saved)
        save_optimizer(optimizer, named, state_dir, step)
        return meta

    total = None if math.isinf(target_steps) else int(target_steps)
    bar = tqdm(total=total, initial=done, desc="distill", unit="step", disable=not progress, dynamic_ncols=True)
    meta = None
    try:
        while step < target_steps and time.perf_counter() < deadline:
            batch = data.next()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, step - done, target_steps - done, time.perf_counter() - started)
            pred = student_output(unet, batch.latents, batch.t, batch.cond, batch.scales, config.embedding_dim,
                                  config.lora_gain)
            loss = distillation_loss(pred, batch.target, config.loss, sample=batch.latents,
                                     alphas=alphas_cumprod[batch.t.cpu()], prediction_type=prediction_type)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(named), 1.0)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4g}")
            if time.perf_counter() - last_ckpt > 60.0 * config.ckpt_minutes:
                meta = checkpoint()
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4g}", val=meta["val_rel_error"]["mean"])
                last_ckpt = time.perf_counter()
    finally:
        bar.close()
        if step > done or not (out / G.CONFIG_FILE).is_file():
            meta = checkpoint()
    unet.eval()
    meta = meta or G.read_guidance_config(out)
    log(f"{out}: {meta['steps']} steps, {meta['minutes']} min, validation relative error {meta['val_rel_error']}")
    return meta


def is_embedded(model: str | None) -> bool:
    return model in (None, "embedded") or Path(model).resolve() == EMBEDDED_MODEL_DIR.resolve()


def distill_model(model: str | None, out: str | Path | None, config: DistillConfig, *, prompts_file=None,
                  shapes_world: bool | None = None, device=None, threads: int | None = None, state_dir=None,
                  progress: bool = True) -> dict:
    """Load a checkpoint (the embedded model by default) and train its guidance adapter into `out`.

    `shapes_world`: shapes-world prompts and images (None: when the model is the embedded one).
    """
    C.set_threads(threads)
    if device is None:
        device = C.device()
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    embedded = is_embedded(model)
    shapes_world = embedded if shapes_world is None else shapes_world
    if out is None:
        if not embedded:
            raise ValueError("--out is required for a model other than the embedded one")
        out = EMBEDDED_MODEL_DIR / "guidance"
    if prompts_file is not None:
        prompts = file_prompts(prompts_file)
    elif shapes_world:
        prompts = shapes_world_prompts
    else:
        raise ValueError("pass --prompts FILE (one prompt per line) to distill a model other than the embedded one")
    pipeline = load_pipeline(model, device=device, dtype=torch.float32, guidance_adapter=False)
    pipeline.set_progress_bar_config(disable=True)
    clean = None
    if shapes_world and config.data != "trajectories":
        clean = shapes_world_latents(pipeline, np.random.default_rng(config.seed + 7))
    name = "embedded" if embedded else str(model)
    if Path(resolve_model(model)).is_dir() and not embedded:
        name = str(Path(resolve_model(model)).resolve())
    return distill(pipeline, out, config, prompts, clean=clean, base_model=name, state_dir=state_dir, progress=progress)


# ----------------------------------------------------------------------------------------------- command line
def add_distill_command(subparsers) -> argparse.ArgumentParser:
    """Add `distill` to an argparse subparsers object; the parsed args carry `handler` (returns 0)."""
    defaults = DistillConfig()
    p = subparsers.add_parser(
        "distill", help="train a guidance adapter: one UNet pass per step instead of CFG's two",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="embedded", help="'embedded' (default), a diffusers folder or a hub id")
    p.add_argument("--out", default=None,
                   help="adapter folder (default for the embedded model: assets/embedded/guidance; put it in "
                        "<model folder>/guidance to have it loaded with the model)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"total steps to reach, counting earlier runs (default {defaults.steps} unless --minutes)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this run")
    p.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank (default %(default)s)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--targets", default=",".join(defaults.targets),
                   help="comma list of module names to adapt (default %(default)s, LCM-LoRA's set; "
                        "to_q,to_k,to_v,to_out.0 adapts attention only)")
    p.add_argument("--data", choices=DATA_MODES, default=defaults.data,
                   help="training states: the teacher's CFG trajectories, forward-noised latents, or both "
                        "(default %(default)s)")
    p.add_argument("--prompts", default=None, help="text file, one prompt per line (required unless embedded)")
    p.add_argument("--shapes-world", action="store_true",
                   help="shapes-world prompts and images (automatic for the embedded model; use for its copies)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    p.add_argument("--lr", type=float, default=defaults.lr, help="default %(default)s")
    p.add_argument("--loss", choices=LOSSES, default=defaults.loss, help="default %(default)s")
    p.add_argument("--lora-gain", choices=G.LORA_GAINS, default=defaults.lora_gain,
                   help="scale-1: the LoRA branch times s - 1 (default); one: unscaled")
    p.add_argument("--max-scale", type=float, default=defaults.max_scale,
                   help="train for guidance scales in [1, this] (default %(default)s)")
    p.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim, help="default %(default)s")
    p.add_argument("--pool", type=int, default=defaults.pool, help="clean latents kept for --data noised")
    p.add_argument("--ckpt-minutes", type=float, default=defaults.ckpt_minutes, help="default %(default)s")
    p.add_argument("--state", default=None, help="optimizer-state folder (default runs/distill/<out name>-<hash>)")
    p.add_argument("--fresh", action="store_true", help="start over instead of continuing the adapter in --out")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, slower (SD models)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.set_defaults(handler=run_distill_command)
    return p


def run_distill_command(args) -> int:
    steps = args.steps if args.steps is not None else (None if args.minutes is not None else DistillConfig.steps)
    config = DistillConfig(
        steps=steps, minutes=args.minutes, rank=args.rank, alpha=args.alpha,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()), data=args.data,
        batch_size=args.batch_size, lr=args.lr, loss=args.loss, lora_gain=args.lora_gain, max_scale=args.max_scale,
        embedding_dim=args.embedding_dim,
        pool=args.pool, ckpt_minutes=args.ckpt_minutes, seed=args.seed, fresh=args.fresh,
        gradient_checkpointing=args.gradient_checkpointing)
    meta = distill_model(args.model, args.out, config, prompts_file=args.prompts,
                         shapes_world=True if args.shapes_world else None, device=args.device, threads=args.threads,
                         state_dir=args.state)
    print(json.dumps(meta, indent=2))
    return 0
