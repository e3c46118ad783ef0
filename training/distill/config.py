"""How a guidance adapter is trained: one value, one default per number, checked up front."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.guidance_format import EMBEDDING_DIM, LORA_GAIN, LORA_GAINS, LORA_TARGETS, MAX_SCALE

DATA_MODES = ("trajectories", "noised", "mixed")
# "mse": plain MSE, dominated by high scales (the target grows with s); "relative": each sample's squared
# error divided by its target's mean square, so every scale and timestep counts alike.
# "relative-eps": the same in eps space (eps derived from v for v-prediction models): the space the error is
# reported in; for v models it puts the effort on low noise levels, where eps-space errors are largest.
LOSSES = ("relative-eps", "relative", "mse")


@dataclass
class DistillConfig:
    """How an adapter is trained. One default per number, documented here (the choices behind the defaults:
    assets/embedded/MODEL_CARD.md)."""

    steps: int | None = 2000  # total optimizer steps to reach (None: until `minutes` run out)
    minutes: float | None = None  # wall-clock budget of this run
    rank: int = 64  # the embedded model's adapter: 13 MB
    alpha: float | None = None  # LoRA alpha; None = rank (scale 1)
    targets: tuple[str, ...] = LORA_TARGETS
    data: str = "trajectories"
    loss: str = "relative-eps"  # see LOSSES
    lora_gain: str = LORA_GAIN  # the LoRA branch times s - 1 (see pipelines/guidance_format.py)
    batch_size: int = 8
    lr: float = 5e-4
    warmup: int = 50  # steps of linear lr warm-up (each run)
    max_scale: float = MAX_SCALE  # s ~ U[1, max_scale]; a narrower range fits s = 7.5 better
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
        if self.data not in DATA_MODES:
            raise ValueError(f"data must be one of {DATA_MODES}, got {self.data!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.lora_gain not in LORA_GAINS:
            raise ValueError(f"lora_gain must be one of {LORA_GAINS}, got {self.lora_gain!r}")
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps, minutes or both")
        if self.max_scale <= 1.0:
            raise ValueError(f"max_scale must be > 1, got {self.max_scale}")
        if self.rank < 1 or self.batch_size < 1:
            raise ValueError("rank and batch_size must be >= 1")
