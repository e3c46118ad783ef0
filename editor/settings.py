"""Per-layer generation settings: one default each, defined here, validated in one place."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from pipelines.attention import ATTENTION_ALIASES, ATTENTION_MODES, ROUTING_MODES
from pipelines.guidance import GUIDANCE_MODES, NEGATIVE_PROMPT_ERROR
from pipelines.masks import BCG_MASKS
from pipelines.call_inputs import BACKGROUND_SOURCES, PRESERVE_MODES
from pipelines.schedulers import SCHEDULERS
from pipelines.tight import MASK_FITS

MAX_STEPS = 1000
MAX_GUIDANCE_SCALE = 50.0
MAX_MASK_PIXELS = 256  # dilation / feather radius; more is almost surely a unit mistake


@dataclass(frozen=True)
class EditSettings:
    """How one layer is generated. Names follow diffusers where diffusers has the setting."""

    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    scheduler: str = "ddim"
    # Share of final steps left unblended so the edit's boundary harmonises with the background.
    # The paper's demo uses 0.05 (its evaluation 0.2); 0.1 frees the last 2 of 20 steps.
    free_steps_ratio: float = 0.1
    # "memory": Background Consistency Guidance; "renoise": the no-memory blended-latent baseline.
    background: str = "memory"
    # Cross-attention routing: "mqd" each region hears its own layer's prompt; "qd-background" the
    # edit vs the background prompt elsewhere; "qd-previous" the edit vs the prompt of the layer just
    # below elsewhere (the reference code's QD); "bcg" plain cross-attention to the current prompt.
    # Projects saved with "qd" load as "qd-background" (what "qd" meant).
    attention: str = "mqd"
    # "pixels": previous pixels kept bit-identical outside the soft mask; "latents": paper behaviour.
    preserve: str = "pixels"
    mask_dilation: int = 0  # px grown around a rough mask; 0 keeps the promise "outside your mask is untouched"
    mask_feather: int = 2  # px of blend at the edit's edge (inside a whole mask; around the object when tight)
    # "tight": a rough mask means "somewhere here": the edit finds its object while denoising and keeps the old
    # background inside the mask too (pipelines/tight.py); "whole": repaint the whole mask.
    mask_fit: str = "tight"
    # "cfg": classifier-free guidance, two UNet rows per step; "distilled": one row with the model's
    # guidance adapter (pipeline.has_guidance_adapter), no negative prompt.
    guidance: str = "cfg"
    # BCG's latent mask: "fractional" area-averages the region to the latent grid (cells on the edge
    # keep part of the remembered latent); "binary" resizes it nearest-neighbour (the reference code).
    bcg_mask: str = "fractional"
    # How MQD's regions map onto each attention grid: "majority" (a cell goes to the region covering
    # most of it) or "erode-dilate" (the reference code: the edit keeps only cells it fills, earlier
    # layers take every cell they touch).
    routing: str = "majority"

    def __post_init__(self):
        _check_int("num_inference_steps", self.num_inference_steps, 1, MAX_STEPS)
        _check_number("guidance_scale", self.guidance_scale, 0.0, MAX_GUIDANCE_SCALE)
        if not isinstance(self.negative_prompt, str):
            raise TypeError(f"negative_prompt must be a string, got {type(self.negative_prompt).__name__}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {self.scheduler!r}")
        _check_number("free_steps_ratio", self.free_steps_ratio, 0.0, 1.0)
        if self.background not in BACKGROUND_SOURCES:
            raise ValueError(f"background must be one of {BACKGROUND_SOURCES}, got {self.background!r}")
        object.__setattr__(self, "attention", ATTENTION_ALIASES.get(self.attention, self.attention))
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.preserve not in PRESERVE_MODES:
            raise ValueError(f"preserve must be one of {PRESERVE_MODES}, got {self.preserve!r}")
        _check_int("mask_dilation", self.mask_dilation, 0, MAX_MASK_PIXELS)
        _check_int("mask_feather", self.mask_feather, 0, MAX_MASK_PIXELS)
        if self.mask_fit not in MASK_FITS:
            raise ValueError(f"mask_fit must be one of {MASK_FITS}, got {self.mask_fit!r}")
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"guidance must be one of {GUIDANCE_MODES}, got {self.guidance!r}")
        if self.guidance == "distilled" and self.negative_prompt:
            raise ValueError(NEGATIVE_PROMPT_ERROR)
        if self.bcg_mask not in BCG_MASKS:
            raise ValueError(f"bcg_mask must be one of {tuple(BCG_MASKS)}, got {self.bcg_mask!r}")
        if self.routing not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {self.routing!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def updated(self, **changes) -> EditSettings:
        """A copy with `changes` applied (None means "keep"); unknown names are an error, not ignored."""
        unknown = set(changes) - set(self.names())
        if unknown:
            raise TypeError(f"unknown setting(s) {sorted(unknown)}; valid settings are {list(self.names())}")
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def for_family(self, family_defaults: dict) -> EditSettings:
        """A model family's own defaults (pipelines.families.ModelFamily.default_settings: FLUX's sampler and
        distilled guidance, its step count) in place of the generic defaults this copy still holds; settings
        the caller changed stay as they are."""
        generic = EditSettings()
        return self.updated(**{name: value for name, value in family_defaults.items()
                               if getattr(self, name) == getattr(generic, name)})

    @classmethod
    def preset(cls, name: str) -> EditSettings:
        """The settings of a named bundle of PRESETS ("default": the defaults above)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
        return cls().updated(**PRESETS[name])

    @classmethod
    def from_dict(cls, values: dict) -> EditSettings:
        """Settings as stored in a project; names this version does not know are an error.

        Layers saved before tight edits existed repainted their whole mask, so a missing mask_fit replays as "whole".
        """
        return cls().updated(**{"mask_fit": "whole", **values})


# Named bundles of settings (EditSettings.preset); a session's own settings override them.
PRESETS: dict[str, dict] = {
    "default": {},
    # The official code of the layer-wise memory paper (carpedkm/improving-editability, on PixArt-α 1024 px):
    # DPM-Solver++ 20 steps, CFG 7.5, empty negative prompt; BCG frees the last 20% of the steps (its evaluation
    # setting; its demo uses 5%); the binarised box is the edit region, unfeathered, repainted whole; BCG's latent
    # mask is nearest-resized and MQD's regions reach the attention grids by erode-current/dilate-earlier.
    # Pixel preservation stays a method setting (the benchmark's "mqd" method is the paper's latent-space one).
    "paper": {"scheduler": "dpm++", "num_inference_steps": 20, "guidance_scale": 7.5, "negative_prompt": "",
              "free_steps_ratio": 0.2, "mask_fit": "whole", "mask_dilation": 0, "mask_feather": 0,
              "bcg_mask": "binary", "routing": "erode-dilate"},
}


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")


def _check_number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
