"""The values the app's controls hold, as one typed value each, and their checks (no gradio here).

Gradio hands every control's value to a handler separately; the wiring (ui/events.py) packs the settings
controls into one `SettingsControls`, which turns them into EditSettings keyword arguments.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass

import numpy as np

from editor import EditSettings
from editor.settings import SCHEDULERS
from ui.canvas import MASK_MODES

MAX_UI_SEED = 2**31 - 1  # random seeds are drawn below this; JavaScript numbers stay exact
SEED_MODES = [("session noise", "session"), ("this number", "fixed"), ("random", "random")]
MASK_MODE_LABELS = {"scribble": "area of the scribble", "stroke": "the stroke itself",
                    "stroke box": "bounding box of the strokes", "box": "box x0, y0, x1, y1"}
MASK_MODE_CHOICES = [(MASK_MODE_LABELS[mode], mode) for mode in MASK_MODES]  # what each means: ui/canvas.py
MAX_VARIATIONS = 6
GUIDANCE_NOTE = ("distilled and fast run one model pass per step and have no negative prompt; fast runs only its "
                 "adapter's few steps")
NO_NEGATIVE_PROMPT = ("distilled", "fast")  # their adapters learned the empty prompt as the unconditional half
FAST_SCHEDULER = "ddim"  # the sampler a fast adapter is distilled for (pipelines.LayeredPipeline.check_inputs)
GUIDANCE_NAMES = {"cfg": "CFG", "distilled": "distilled", "fast": "fast", "off": "no guidance"}  # info["guidance"]


@dataclass(frozen=True)
class SettingsControls:
    """The settings controls' values, in the order the controls are wired (the HTTP API's order too).

    Values are as gradio gives them: sliders send floats for whole-number settings, an empty textbox None.
    `edit_settings()` checks and converts them; EditSettings validates the rest.
    """

    negative_prompt: str | None
    num_inference_steps: float
    guidance_scale: float
    guidance: str
    scheduler: str
    free_steps_ratio: float
    attention: str
    background: str
    preserve: str
    mask_dilation: float
    mask_feather: float
    mask_fit: str
    bcg_mask: str
    routing: str

    WHOLE_NUMBERS = ("num_inference_steps", "mask_dilation", "mask_feather")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    @classmethod
    def of_layer(cls, layer) -> SettingsControls:
        """The values that show `layer`'s recorded settings (defaults for any it did not record)."""
        recorded = EditSettings.from_dict(dict(layer.settings))  # older names ("qd") read as today's
        values = {name: getattr(recorded, name) for name in cls.names()}
        return cls(**{**values, "negative_prompt": layer.negative_prompt})

    def values(self) -> tuple:
        """The control values in wiring order (for an event that fills the controls)."""
        return dataclasses.astuple(self)

    def edit_settings(self, fast_steps: int | None = None) -> dict:
        """The EditSettings keyword arguments these controls describe. Guidance "fast" runs the `fast_steps` DDIM
        steps of the pipeline's fast adapter, whatever the steps and scheduler controls hold."""
        settings = dataclasses.asdict(self)
        for name in self.WHOLE_NUMBERS:
            settings[name] = whole_number(name, settings[name])
        if settings["guidance"] == "fast" and fast_steps:
            settings.update(num_inference_steps=fast_steps, scheduler=FAST_SCHEDULER)
        if settings["guidance"] in NO_NEGATIVE_PROMPT or settings["negative_prompt"] is None:
            settings["negative_prompt"] = ""  # an adapter has none; its textbox is disabled
        return settings


SETTING_CONTROLS = SettingsControls.names()


def default_settings(pipeline) -> EditSettings:
    """The settings the controls start from: a model family's own sampler, steps and guidance, else the defaults."""
    family = getattr(pipeline, "family", None)
    return EditSettings().for_family(family.default_settings if family is not None else {})


def guidance_choices(pipeline) -> list[str]:
    """Guidance modes this pipeline can run: "distilled" only when it has a guidance adapter, "fast" only when it
    has a fast adapter; only "distilled" for a model that embeds its guidance scale itself (FLUX-dev)."""
    family = getattr(pipeline, "family", None)
    if family is not None and family.native_guidance:
        return ["distilled"]
    return ["cfg", *(["distilled"] if getattr(pipeline, "has_guidance_adapter", False) else []),
            *(["fast"] if fast_steps(pipeline) else [])]


def fast_steps(pipeline) -> int | None:
    """The steps guidance "fast" runs on this pipeline (None: it has no fast adapter)."""
    return getattr(pipeline, "fast_steps", None)


def unet_passes(mode: str, steps: int, fast: int | None, guidance_scale: float) -> int:
    """UNet evaluations of one edit: CFG runs an unconditional and a conditional pass per step (one at a guidance
    scale <= 1, where the pipeline turns guidance off), distilled one; fast runs its adapter's `fast` steps, one
    pass each."""
    return {"cfg": 2 * steps if guidance_scale > 1 else steps, "distilled": steps, "fast": fast}[mode]


def guidance_labels(pipeline, steps: int, guidance_scale: float) -> list[tuple[str, str]]:
    """The guidance control's (label, mode) choices, each label saying what an edit costs at `steps` steps."""
    fast, network = fast_steps(pipeline), network_name(pipeline)
    return [(f"{GUIDANCE_NAMES[mode]} · {passes(unet_passes(mode, steps, fast, guidance_scale), network)}", mode)
            for mode in guidance_choices(pipeline)]


def speed_note(info: dict, network: str = "UNet") -> str:
    """What painting a layer took, from its info: "fast: 0.21 s, 4 UNet passes" (older layers may lack some)."""
    mode = info.get("guidance")
    cost = [f"{info.get('seconds', 0):.2f} s",
            *([passes(info["unet_evals"], network)] if "unet_evals" in info else [])]
    return (f"{GUIDANCE_NAMES.get(mode, mode)}: " if mode else "") + ", ".join(cost)


def network_name(pipeline) -> str:
    """What the model's denoiser is called in cost labels: "UNet" (SD, SDXL) or "transformer" (PixArt, SD3, FLUX)."""
    family = getattr(pipeline, "family", None)
    return "transformer" if family is not None and family.denoiser_name == "transformer" else "UNet"


def passes(count: int, network: str = "UNet") -> str:
    return f"{count} {network} pass{'' if count == 1 else 'es'}"


def scheduler_choices(pipeline) -> list[str]:
    """The samplers this pipeline's model family runs (all of pipelines.schedulers.SCHEDULERS without one)."""
    family = getattr(pipeline, "family", None)
    return list(family.schedulers) if family is not None else sorted(SCHEDULERS)


def pick_seed(mode: str, seed) -> int | None:
    """None = session noise (edits share the background's noise; re-edits keep the layer's seed)."""
    if mode == "random":
        return secrets.randbelow(MAX_UI_SEED)
    if mode == "fixed":
        if seed is None:
            raise ValueError("enter a seed number, or choose 'random'")
        return whole_number("seed", seed)
    if mode == "session":
        return None
    raise ValueError(f"unknown seed mode {mode!r}")


def variation_seeds(mode: str, seed, count) -> list[int]:
    """The seeds of `count` variations: from the number shown on ("this number"), else random ones."""
    count = whole_number("variations", count)
    if not 2 <= count <= MAX_VARIATIONS:
        raise ValueError(f"make between 2 and {MAX_VARIATIONS} variations, got {count}")
    if mode == "fixed":
        first = pick_seed(mode, seed)
        return [(first + k) % (MAX_UI_SEED + 1) for k in range(count)]
    pick_seed(mode, seed)  # an unknown mode is an error here too
    return [secrets.randbelow(MAX_UI_SEED) for _ in range(count)]


def whole_number(name: str, value) -> int:
    """`value` as an int when it is a whole number (gradio sends 4.0 for 4); anything else is an error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)
