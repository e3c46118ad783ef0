"""How a guidance adapter is trained: one value, one default per number, checked up front."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.guidance_format import EMBEDDING_DIM, LORA_GAINS, LORA_TARGETS, MAX_SCALE, MIN_SCALE

# "edits": masked edits through a Session (BCG, MQD, the student's own rollouts; training/distill/rollouts.py);
# "trajectories": the teacher's plain text-to-image CFG runs; "noised": clean latents noised to a random step.
# "edits+trajectories": after each edit scene, as many optimizer steps on shuffled batches of teacher
# trajectories (many prompts per batch: less correlated than one edit's consecutive states).
DATA_MODES = ("edits", "edits+trajectories", "trajectories", "noised", "mixed")
# "guidance": one pass per step reproduces CFG (guidance="distilled"); "fast": a few-step student of the CFG
# sampler (guidance="fast").
MODES = ("guidance", "fast")
# "mse": plain MSE, dominated by high scales (the target grows with s); "relative": each sample's squared
# error divided by its target's mean square, so every scale and timestep counts alike.
# "relative-eps": the same in eps space (eps derived from v for v-prediction models): the space the error is
# reported in; for v models it puts the effort on low noise levels, where eps-space errors are largest.
# "relative-v": the same in v space whatever the model predicts: |dv|^2 = |dx0|^2 + |deps|^2 for a fixed x_t, so
# high-noise steps (x0 errors: where layout and shape are decided) and low-noise steps (eps errors) both count.
# "relative-x0": x0 space only (the error at high noise).
LOSSES = ("relative-v", "relative-eps", "relative-x0", "relative", "mse")
# Which denoiser calls of an edit rollout are trained on. "all": every one. "by-noise": a call at timestep t with
# probability max(CALL_FLOOR, t / T) (the rest run without gradient, and without the teacher when the rollout
# follows the student), so the high-noise steps, where layout and colour are decided and the student's error is
# largest, get more of the updates per CPU minute.
CALL_SAMPLING = ("by-noise", "all")
CALL_FLOOR = 0.25


BACKGROUND_WEIGHTS_FORM = "background weights are NAME=WEIGHT pairs with NAME a shapes-world background and WEIGHT > 0"


def parse_background_weights(text: str) -> tuple[tuple[str, float], ...]:
    """ "sea=3,sand=2" -> (("sea", 3.0), ("sand", 2.0)); the backgrounds not named keep weight 1."""
    weights = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        name, sep, value = item.partition("=")
        try:
            weights.append((name.strip(), float(value)))
        except ValueError:
            raise ValueError(f"{BACKGROUND_WEIGHTS_FORM}, e.g. 'sea=3'; got {item!r}") from None
    return check_background_weights(tuple(weights))


def check_background_weights(weights: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    from benchmark.shapes_world import BACKGROUNDS

    for name, weight in weights:
        if name not in BACKGROUNDS or not weight > 0:
            raise ValueError(f"{BACKGROUND_WEIGHTS_FORM} ({', '.join(BACKGROUNDS)}), e.g. 'sea=3'; "
                             f"got {name}={weight:g}")
    return weights


@dataclass
class DistillConfig:
    """How an adapter is trained. One default per number, documented here (the choices behind the defaults:
    assets/embedded/MODEL_CARD.md)."""

    mode: str = "guidance"  # see MODES
    steps: int | None = 2000  # total optimizer steps to reach (None: until `minutes` run out)
    minutes: float | None = None  # wall-clock budget of this run
    rank: int = 64  # the embedded model's adapter: 13 MB
    alpha: float | None = None  # LoRA alpha; None = rank (scale 1)
    targets: tuple[str, ...] = LORA_TARGETS
    data: str = "edits"  # see DATA_MODES (why "edits": assets/embedded/MODEL_CARD.md)
    loss: str = "relative-v"  # see LOSSES
    # "one": the LoRA branch as is (the guidance head carries s); "scale-1": times s - 1 (format-1 adapters).
    # Why "one": assets/embedded/MODEL_CARD.md. Fast adapters need "one" (their LoRA is on at every scale).
    lora_gain: str = "one"
    head: bool = True  # a guidance head: output = last(h) + (s - 1) head(h) (guidance_format.make_guidance_head)
    batch_size: int = 8
    lr: float = 5e-4
    warmup: int = 50  # steps of linear lr warm-up (each run)
    min_scale: float = MIN_SCALE
    max_scale: float = MAX_SCALE  # s ~ U[min_scale, max_scale]; a narrower range fits s = 7.5 better
    student_rollouts: float = 0.5  # share of edits that continue from the student's output (else the teacher's)
    accumulate: int = 4  # edit-rollout denoiser calls per optimizer step (each call is one batch row)
    call_sampling: str = "by-noise"  # see CALL_SAMPLING
    # Shapes-world edit rollouts: how often each scene background is drawn, relative to 1 for those not named
    # (more rollouts where the student misses most; the model card has the measured effect). Empty: uniform.
    background_weights: tuple[tuple[str, float], ...] = ()
    fast_steps: int = 4  # "fast": the student's DDIM steps (trailing spacing)
    teacher_steps: int = 20  # "fast": the CFG teacher's DDIM steps, cut into fast_steps segments
    embedding_dim: int = EMBEDDING_DIM
    sample_steps: tuple[int, int] = (10, 30)  # DDIM step counts of teacher trajectories (inclusive range)
    trajectories: int = 32  # teacher runs generated together; batches mix their states (scales, prompts, steps)
    pool: int = 256  # clean latents kept for "noised" (refreshed as training goes)
    ckpt_minutes: float = 5.0
    val_prompts: int = 4  # validation: teacher trajectories of this many prompts x VALIDATION_SCALES
    seed: int = 0
    fresh: bool = False  # ignore an adapter already in `out` and start from zero
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fast" and (self.teacher_steps % self.fast_steps or self.data != "edits"):
            raise ValueError("fast mode trains on edit rollouts (data='edits') with teacher_steps a multiple of "
                             f"fast_steps, got data={self.data!r}, {self.teacher_steps} and {self.fast_steps}")
        if self.data not in DATA_MODES:
            raise ValueError(f"data must be one of {DATA_MODES}, got {self.data!r}")
        if self.call_sampling not in CALL_SAMPLING:
            raise ValueError(f"call_sampling must be one of {CALL_SAMPLING}, got {self.call_sampling!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lora_gain not in LORA_GAINS:
            raise ValueError(f"lora_gain must be one of {LORA_GAINS}, got {self.lora_gain!r}")
        if self.mode == "fast" and self.lora_gain != "one":
            raise ValueError("a fast adapter's LoRA is on at every guidance scale: lora_gain must be 'one'")
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps, minutes or both")
        if self.max_scale <= 1.0 or not 1.0 <= self.min_scale <= self.max_scale:
            raise ValueError(f"need 1 <= min_scale <= max_scale and max_scale > 1, got {self.min_scale}, "
                             f"{self.max_scale}")
        check_background_weights(self.background_weights)
        if self.rank < 1 or self.batch_size < 1:
            raise ValueError("rank and batch_size must be >= 1")

    @property
    def mode_guidance(self) -> str:
        """The pipeline's guidance mode this adapter serves."""
        return "fast" if self.mode == "fast" else "distilled"
