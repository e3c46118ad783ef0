"""Training states that editing itself produces: masked edits through a Session.

A plain text-to-image trajectory is not what the student meets in the editor. There, inside a box, the latent is
the student's own (its earlier errors included), outside it BCG puts the remembered background back at every step,
and MQD routes each region's queries to its own layer's prompt. `EditRollouts` runs real edits
(`Session.edit`, the same code path as the app) with the training adapter in place of a loaded one and, at every
denoiser call, computes the teacher's target for the very state the editor produced, inside the same attention
routing, and hands (student output, target) to the training step. The rollout then continues from the student's
output (its own trajectory) or from the teacher's (the teacher's trajectory under BCG), by a coin flip per edit.

Two targets:
- "guidance": the teacher's CFG output at the state, uncond + s (cond - uncond) (guidance distillation);
- "fast": where the teacher's CFG sampler would be after all of its steps that fall inside this student step
  (a 20-step trajectory cut into the student's 4 segments), expressed as the output that a single student step
  must give to land there (trajectory-segmented step distillation).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from pipelines.guidance_format import guidance_embedding
from pipelines.schedulers import make_scheduler

from .adapter import student
from .config import CALL_FLOOR, DistillConfig
from .data import PromptSampler

Learn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (pred, target, sample, t)


@dataclass
class EditScene:
    background: str
    edits: list[tuple[str, tuple[int, int, int, int]]]  # (object prompt, pixel box)
    seed: int


def shapes_world_scenes(rng: np.random.Generator, size: int = 64,
                        background_weights: tuple[tuple[str, float], ...] = ()) -> EditScene:
    """A background (half the time with objects in its caption, as users write them) and 1-3 edits of
    training-split objects (held-out triples never appear) in random boxes. `background_weights`: (name, weight)
    pairs, relative to 1 for the backgrounds not named; empty draws them uniformly."""
    from benchmark import shapes_world as sw

    background = None
    if background_weights:
        weights = dict(background_weights)
        p = np.array([weights.get(name, 1.0) for name in sw.BACKGROUNDS])
        background = sw.BACKGROUNDS[int(rng.choice(len(p), p=p / p.sum()))]
    scene = sw.sample_scene(rng, size, n_objects=(0, 3), split="train", background=background)
    caption = scene.caption if rng.random() < 0.5 else sw.caption(scene.background, [])
    pairs = [(c, s) for c in sw.COLOURS for s in sw.SHAPES if not sw.is_held_out(c, s, scene.background)]
    chosen = rng.choice(len(pairs), int(rng.integers(1, 4)), replace=False)
    edits = [(sw.object_prompt(*pairs[int(i)]), tuple(int(v) for v in sw.random_box(rng, size))) for i in chosen]
    return EditScene(caption, edits, int(rng.integers(2**31)))


def prompt_scenes(prompts: PromptSampler, size: tuple[int, int]) -> Callable[[np.random.Generator], EditScene]:
    """Scenes for any checkpoint: a background prompt, then 1-2 edit prompts in boxes of 1/9-1/3 of the image."""

    def scene(rng: np.random.Generator) -> EditScene:
        width, height = size
        texts = prompts(rng, 3)
        edits = []
        for text in texts[1:1 + int(rng.integers(1, 3))]:
            area = rng.uniform(1 / 9, 1 / 3)
            aspect = rng.uniform(0.6, 1.6)
            w = int(min(width, round(width * np.sqrt(area * aspect))))
            h = int(min(height, round(height * np.sqrt(area / aspect))))
            x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            edits.append((text, (x0, y0, x0 + w, y0 + h)))
        return EditScene(texts[0], edits, int(rng.integers(2**31)))

    return scene


class TrainingAdapter:
    """Stands in for a loaded adapter while rollouts run: the pipeline asks it for the student's weights and scale
    embedding; the live peft LoRA is already on the UNet, so `applied` only records the scale."""

    def __init__(self, config: DistillConfig, scale_range: tuple[float, float]):
        self.config, self.scale_range, self.scale = config, scale_range, None
        self.sample_steps = config.fast_steps if config.mode == "fast" else None

    def check_scale(self, guidance_scale: float) -> None:
        pass

    @contextmanager
    def applied(self, guidance_scale: float):
        self.scale = float(guidance_scale)
        yield

    def embedding(self, guidance_scale, batch, device, dtype):
        return guidance_embedding(guidance_scale, self.config.embedding_dim, batch=batch, device=device, dtype=dtype)


class EditRollouts:
    """Runs edits in a Session on `pipeline` and trains on every denoiser call of them (see the module doc)."""

    def __init__(self, pipeline, scenes: Callable[[np.random.Generator], EditScene], uncond, config: DistillConfig,
                 rng: np.random.Generator, learn: Learn):
        from editor import Session

        self.pipeline, self.scenes, self.config, self.rng, self.learn = pipeline, scenes, config, rng, learn
        self.uncond = pipeline.family.unpack_text(uncond)
        self.session_class = Session
        self.adapter = TrainingAdapter(config, (1.0, config.max_scale))
        self.follow_student = True
        self.calls = 0
        self.plain = None  # "edits+trajectories": a TeacherTrajectories source the loop also steps on
        scheduler_config = pipeline.scheduler.config
        self.alphas = make_scheduler("ddim", scheduler_config).alphas_cumprod
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")

    # ------------------------------------------------------------------ one scene
    def run_scene(self) -> int:
        """A background, then the scene's edits, with training at every denoiser call. Returns the number of calls
        trained on."""
        scene = self.scenes(self.rng)
        session = self.session_class(self.pipeline)
        before = self.calls
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "nothing drawn" is an expected outcome of a random edit
            # the background trains too (text-to-image states) but follows the teacher, so edits start from what
            # a CFG user has
            self.follow_student = False
            with self.training_calls(float(self.rng.uniform(self.config.min_scale, self.config.max_scale))) as scale:
                session.generate(scene.background, seed=scene.seed, guidance=self.config.mode_guidance,
                                 guidance_scale=scale, num_inference_steps=self.steps())
            for prompt, box in scene.edits:
                self.follow_student = bool(self.rng.random() < self.config.student_rollouts)
                with self.training_calls(float(self.rng.uniform(self.config.min_scale, self.config.max_scale))) as scale:
                    session.edit(prompt, box, guidance=self.config.mode_guidance, guidance_scale=scale,
                                 num_inference_steps=self.steps())
        return self.calls - before

    def steps(self) -> int:
        if self.config.mode == "fast":
            return self.config.fast_steps
        low, high = self.config.sample_steps
        return int(self.rng.integers(low, high + 1))

    @contextmanager
    def training_calls(self, scale: float):
        """The training adapter in the pipeline's adapter slot and every denoiser call routed through `call`."""
        pipeline, family = self.pipeline, self.pipeline.family
        mode = self.config.mode_guidance
        saved_adapter, predict = pipeline.adapters.get(mode), family.predict
        pipeline.adapters[mode] = self.adapter
        family.predict = lambda latents, t, text, timestep_cond=None: self.call(predict, latents, t, text,
                                                                                timestep_cond)
        try:
            yield scale
        finally:
            pipeline.adapters.pop(mode)
            if saved_adapter is not None:
                pipeline.adapters[mode] = saved_adapter
            del family.predict  # the class's method again

    # ------------------------------------------------------------------ one denoiser call
    def call(self, predict, latents, t, text, timestep_cond):
        """The student's output at the editor's state, trained against the teacher's target there."""
        scale = self.adapter.scale
        rows = latents.shape[0]
        t_rows = torch.as_tensor(t, device=latents.device).reshape(-1).expand(rows)
        if not self.trains_on(t):
            return self.untrained_call(predict, latents, t, text, timestep_cond, scale)
        with torch.no_grad():
            target = self.target(predict, latents, t, text, scale)
        with torch.enable_grad(), student(self.pipeline.denoiser, torch.full((rows,), scale), self.config.lora_gain):
            pred = predict(latents, t, text, timestep_cond=timestep_cond)
            self.learn(pred, target, latents, t_rows)
        self.calls += 1
        chosen = pred.detach() if self.follow_student else target
        return chosen.to(latents.dtype)

    def trains_on(self, t) -> bool:
        """Whether this call is trained on (config.call_sampling)."""
        if self.config.call_sampling == "all":
            return True
        share = max(CALL_FLOOR, float(t) / self.pipeline.scheduler.config.num_train_timesteps)
        return bool(self.rng.random() < share)

    def untrained_call(self, predict, latents, t, text, timestep_cond, scale) -> torch.Tensor:
        """The rollout's next output without a training step: the student's (no gradient) or the teacher's."""
        with torch.no_grad():
            if not self.follow_student:
                return self.target(predict, latents, t, text, scale).to(latents.dtype)
            with student(self.pipeline.denoiser, torch.full((latents.shape[0],), scale), self.config.lora_gain):
                return predict(latents, t, text, timestep_cond=timestep_cond).to(latents.dtype)

    def target(self, predict, latents, t, text, scale) -> torch.Tensor:
        """What the student must output at this state (see the module doc)."""
        if self.config.mode == "fast":
            return self.fast_target(predict, latents, t, text, scale)
        return self.guided(predict, latents, t, text, scale)

    def guided(self, predict, latents, t, text, scale) -> torch.Tensor:
        """The teacher's CFG output (adapter off, no scale embedding); its unconditional row hears the null prompt
        repeated per region, as the pipeline's CFG does."""
        from pipelines.text_conditioning import TextConditioning

        regions = max(1, text.tokens // self.uncond.tokens)
        null = self.uncond.to(latents.device, text.embeds.dtype).repeat_tokens(regions)
        both = TextConditioning.batch([null] * latents.shape[0] + [text])
        unet = self.pipeline.denoiser
        unet.disable_adapters()
        try:
            out = predict(torch.cat([latents, latents]), t, both).float()
        finally:
            unet.enable_adapters()
        uncond, cond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    def fast_target(self, predict, latents, t, text, scale) -> torch.Tensor:
        """The output one DDIM step from (latents, t) must give to land where the teacher's `teacher_steps`-step CFG
        DDIM sampler lands after its steps inside this segment."""
        config = self.config
        teacher = make_scheduler("ddim", self.pipeline.scheduler.config, timestep_spacing="trailing")
        teacher.set_timesteps(config.teacher_steps, device=latents.device)
        t_now = int(t)
        end = t_now - self.pipeline.scheduler.config.num_train_timesteps // config.fast_steps
        x = latents.float()
        for tt in teacher.timesteps:
            if end < int(tt) <= t_now:
                guided = self.guided(predict, x.to(latents.dtype), tt, text, scale)
                x = teacher.step(guided, tt, x).prev_sample
        return output_reaching(x, latents.float(), t_now, end, self.alphas, teacher.final_alpha_cumprod,
                               self.prediction_type)


def output_reaching(target_prev: torch.Tensor, sample: torch.Tensor, t: int, prev_t: int, alphas, final_alpha,
                    prediction_type: str) -> torch.Tensor:
    """The model output for which one deterministic DDIM step from `sample` at t lands exactly on `target_prev`
    at prev_t (x' = sqrt(a') x0 + sqrt(1 - a') eps, with x0 and eps tied to x_t by the output)."""
    a = alphas[t].to(sample.device, torch.float32)
    a_prev = (alphas[prev_t] if prev_t >= 0 else final_alpha).to(sample.device, torch.float32)
    # eps = (x_t - sqrt(a) x0) / sqrt(1 - a), so x' = c0 x0 + c1 x_t with:
    c1 = (1 - a_prev).sqrt() / (1 - a).sqrt()
    c0 = a_prev.sqrt() - c1 * a.sqrt()
    x0 = (target_prev - c1 * sample) / c0
    eps = (sample - a.sqrt() * x0) / (1 - a).sqrt()
    if prediction_type == "v_prediction":
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    if prediction_type == "epsilon":
        return eps
    raise ValueError(f"step distillation supports epsilon and v_prediction models, not {prediction_type!r}")
