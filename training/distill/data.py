"""Where the UNet is evaluated during distillation: prompts, and training states with their teacher targets.

Sources serve `Batch`es: TeacherTrajectories (states of the teacher's own CFG sampling runs), ForwardNoised
(clean latents noised to a random timestep) and Alternating (both in turn).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch


from pipelines.schedulers import make_scheduler

from .adapter import teacher_guided
from .config import DistillConfig

PromptSampler = Callable[[np.random.Generator, int], list[str]]
CleanSource = Callable[[int], tuple[torch.Tensor, torch.Tensor]]  # n -> (clean latents, prompt embeds)


# ----------------------------------------------------------------------------------------------- prompts
def shapes_world_prompts(rng: np.random.Generator, n: int) -> list[str]:
    """What the embedded model is asked at inference: scene captions (backgrounds), object prompts (edits)."""
    from benchmark import shapes_world

    prompts = []
    for _ in range(n):
        scene = shapes_world.sample_scene(rng, n_objects=(0, 3), split="train")
        u = rng.random()
        if scene.objects and u < 0.4:
            obj = scene.objects[int(rng.integers(len(scene.objects)))]
            prompts.append(shapes_world.object_prompt(obj.colour, obj.shape))
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


@torch.no_grad()
def encode_prompts(pipeline, prompts: Sequence[str]) -> torch.Tensor:
    """The prompts' conditioning through the family's encoder (the one inference uses), packed into one tensor
    per prompt (pipelines.families: pack_text), so batches of any model family index and concatenate like SD's
    plain embeddings."""
    return pipeline.family.pack_text(pipeline.family.encode_prompt(prompts))


# ----------------------------------------------------------------------------------------------- training states
@dataclass
class Batch:
    latents: torch.Tensor  # the UNet's input (already scaled by the scheduler)
    t: torch.Tensor  # [B] timesteps
    cond: torch.Tensor  # [B, L, D] packed prompt conditioning (encode_prompts)
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

    def run(self, prompts: list[str], scales: Sequence[float], steps: int, seed: int,
            trailing: bool = False) -> list[Batch]:
        """Sample `prompts` with the teacher at `scales` (one per prompt); one Batch per step. `trailing`: DDIM's
        trailing timestep spacing whatever the checkpoint's (fast adapters' segments)."""
        pipe = self.pipeline
        device = pipe.denoiser.device
        sampler = make_scheduler("ddim", pipe.scheduler.config, **({"timestep_spacing": "trailing"} if trailing else {}))
        sampler.set_timesteps(steps, device=device)
        width, height = (side // pipe.vae_scale_factor for side in pipe.default_size)
        generator = torch.Generator("cpu").manual_seed(int(seed))
        shape = (len(prompts), pipe.latent_channels, height, width)
        latents = (torch.randn(shape, generator=generator) * sampler.init_noise_sigma).to(device, pipe.denoiser.dtype)
        cond = encode_prompts(pipe, prompts)
        scale = torch.tensor(list(scales), dtype=torch.float32, device=device)
        states = []
        for t in sampler.timesteps:
            model_input = sampler.scale_model_input(latents, t)
            t_rows = t.reshape(1).expand(len(prompts)).to(device)
            guided = teacher_guided(pipe.family, model_input, t_rows, cond, self.uncond, scale)
            states.append(Batch(model_input.detach(), t_rows.clone(), cond, scale, guided))
            latents = sampler.step(guided.to(latents.dtype), t, latents).prev_sample
        if self.keep_finals:
            self.finals.extend(zip(latents.detach().clone(), cond.clone()))
        return states

    def refill(self) -> None:
        cfg = self.config
        n = cfg.trajectories
        steps = int(self.rng.integers(cfg.sample_steps[0], cfg.sample_steps[1] + 1))
        scales = self.rng.uniform(cfg.min_scale, cfg.max_scale, n)
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

    def __init__(self, pipeline, clean: CleanSource, uncond: torch.Tensor,
                 config: DistillConfig, rng: np.random.Generator, refresh: int):
        self.pipeline, self.clean, self.uncond, self.config, self.rng = pipeline, clean, uncond, config, rng
        self.refresh = refresh
        self.latents, self.cond = clean(config.pool)
        self.noise_schedule = pipeline.scheduler

    def next(self) -> Batch:
        cfg, device = self.config, self.pipeline.denoiser.device
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
        scales = torch.from_numpy(self.rng.uniform(cfg.min_scale, cfg.max_scale, cfg.batch_size)).float().to(device)
        return Batch(noisy, t, cond, scales, teacher_guided(self.pipeline.family, noisy, t, cond, self.uncond, scales))


class Alternating:
    """"mixed": one batch from each source in turn."""

    def __init__(self, *sources):
        self.sources, self.count = sources, 0

    def next(self) -> Batch:
        self.count += 1
        return self.sources[self.count % len(self.sources)].next()


def shapes_world_latents(pipeline, rng: np.random.Generator) -> CleanSource:
    """Clean examples for the embedded model: VAE-encoded shapes-world scenes and their captions."""
    from benchmark import shapes_world

    from ..common import to_tensor
    from ..train_unet import objects_caption

    size = pipeline.default_size[0]

    @torch.no_grad()
    def clean(n: int):
        scenes = [shapes_world.sample_scene(rng, size=size, n_objects=(0, 3), split="train") for _ in range(n)]
        captions = [objects_caption(s.objects) if s.objects and rng.random() < 0.4 else s.caption for s in scenes]
        pixels = to_tensor([s.image for s in scenes]).to(pipeline.vae.device, pipeline.vae.dtype)
        latents = pipeline.vae.encode(pixels).latent_dist.mode() * pipeline.vae.config.scaling_factor
        return latents.to(pipeline.denoiser.dtype), encode_prompts(pipeline, captions)

    return clean


def teacher_sample_latents(trajectories: TeacherTrajectories) -> CleanSource:
    """Clean examples for any checkpoint: the teacher's own CFG samples (no image data needed)."""
    trajectories.keep_finals = True

    def clean(n: int):
        while len(trajectories.finals) < n:
            trajectories.refill()
        taken, trajectories.finals = trajectories.finals[:n], trajectories.finals[n:]
        return torch.stack([z for z, _ in taken]), torch.stack([c for _, c in taken])

    return clean


def training_source(pipeline, prompts: PromptSampler, uncond: torch.Tensor, config: DistillConfig,
                    rng: np.random.Generator, clean: CleanSource | None):
    """The batch source `config.data` asks for. `clean` gives clean examples for "noised"/"mixed"; None uses the
    teacher's own samples."""
    trajectories = TeacherTrajectories(pipeline, prompts, uncond, config, rng)
    if config.data == "trajectories":
        return trajectories
    source = clean or teacher_sample_latents(trajectories)
    refresh = max(1, config.batch_size // 4) if clean is not None else 0
    noised = ForwardNoised(pipeline, source, uncond, config, rng, refresh)
    return noised if config.data == "noised" else Alternating(noised, trajectories)
