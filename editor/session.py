"""Session: one open image, its layer memory, and the pipeline that paints it.

The public Python API. The UI, the benchmark and the CLI all go through it; it is the one place
that knows both the memory (memory/) and diffusion (pipelines/). Every operation either completes
and commits one new layer stack to the memory, or raises and leaves the session exactly as it was.
"""

from __future__ import annotations

import secrets
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from memory import LayerMemory, LayerRecord, MemoryStateError, ProjectError, load_project, save_project
from pipelines import EditRegion, LayeredPipeline, LayeredPipelineOutput, TextConditioning, load_pipeline, masks
from pipelines.loading import EMBEDDED

from .export import export_layers
from .images import to_rgb_array
from .restack import check_layers_above, restack, visible_under
from .settings import EditSettings

MAX_SEED = 2**63 - 1
# An edit "drew nothing" when fewer than this share of its region (and at least a few pixels) changed clearly.
NOTHING_DRAWN_SHARE = 0.005
CLEAR_CHANGE_LEVELS = 8  # a pixel changed clearly when a channel moved by more than this many levels (0-255)


class NothingDrawnWarning(UserWarning):
    """An edit left its region essentially unchanged (the layer is still committed, so undo removes it)."""


def changed_pixels(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> int:
    """How many pixels of `region` changed clearly between two uint8 images."""
    change = np.abs(after.astype(np.int16) - before.astype(np.int16)).max(axis=2)
    return int(np.count_nonzero((change > CLEAR_CHANGE_LEVELS) & region))


def nothing_drawn_limit(region_pixels: int) -> int:
    return max(4, int(NOTHING_DRAWN_SHARE * region_pixels))


class Session:
    """An editable image made of layers: a background, then masked edits on top.

    >>> session = Session.from_pretrained()                     # the embedded model
    >>> session.generate("a grass background", seed=1)
    >>> session.edit("a red star", mask=(8, 8, 40, 40))        # box in pixels, or a mask image
    >>> session.undo(); session.redo(); session.save("scene.lep")
    """

    def __init__(self, pipeline: LayeredPipeline, *, model: str | None = None,
                 defaults: EditSettings | None = None, history_limit: int | None = None):
        self.pipeline = pipeline
        self.model = model  # where the pipeline came from, so a saved project can reload it
        self._defaults = (defaults or EditSettings()).for_family(pipeline.family.default_settings)
        self._memory = LayerMemory(history_limit=history_limit)

    @classmethod
    def from_pretrained(cls, path_or_id: str | None = EMBEDDED, device=None, dtype=None, *,
                        guidance_adapter: str | Path | bool | None = None, preset: str = "default",
                        **defaults) -> Session:
        """Open a session on the embedded model (default), a local diffusers folder or a hub id.

        Any supported family loads (SD-1.x/2.x, SDXL, PixArt-α); the folder's components decide which.
        `guidance_adapter`: a folder made by `python -m training distill` (enables guidance="distilled");
        None loads `<model folder>/guidance` when present (the embedded model ships one); False loads none.
        `preset`: a settings bundle of editor.settings.PRESETS ("paper": the official code's settings);
        `defaults` (EditSettings names) override it.
        """
        source = EMBEDDED if path_or_id is None else str(path_or_id)
        settings = EditSettings.preset(preset).updated(**defaults)
        pipeline = load_pipeline(source, device=device, dtype=dtype, guidance_adapter=guidance_adapter)
        return cls(pipeline, model=source, defaults=settings)

    # ------------------------------------------------------------------ state
    @property
    def defaults(self) -> EditSettings:
        return self._defaults

    def set_defaults(self, **settings) -> None:
        """Change the settings later calls use when they do not pass their own."""
        self._defaults = self._defaults.updated(**settings)

    @property
    def layers(self) -> tuple[LayerRecord, ...]:
        return self._memory.layers

    @property
    def seed(self) -> int | None:
        """The session seed (layer 0's): the initial noise every layer shares unless given its own seed."""
        return self.layers[0].seed if self.layers else None

    @property
    def image(self) -> Image.Image | None:
        """The current picture: the image of the topmost visible layer."""
        visible = [layer for layer in self.layers if layer.visible]
        return Image.fromarray(np.asarray(visible[-1].image)) if visible else None

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of the session's image, None before a background exists."""
        return (self.layers[0].image.shape[1], self.layers[0].image.shape[0]) if self.layers else None

    @property
    def can_undo(self) -> bool:
        return self._memory.can_undo

    @property
    def can_redo(self) -> bool:
        return self._memory.can_redo

    # ------------------------------------------------------------------ creating layers
    def generate(self, prompt: str, *, seed: int | None = None, width: int | None = None, height: int | None = None,
                 callback_on_step_end: Callable | None = None, **settings) -> Image.Image:
        """Paint a new background (layer 0). Replaces the stack as one undoable step.

        `seed` becomes the session seed (a random one is drawn when omitted); `settings` are any
        EditSettings names (num_inference_steps, guidance_scale, negative_prompt, scheduler, ...).
        """
        config = self._settings(settings)
        seed = _check_seed(seed) if seed is not None else secrets.randbelow(2**31)
        default_w, default_h = self.pipeline.default_size
        size = (int(width or default_w), int(height or default_h))
        record = self._paint_background(prompt, config, seed, size, callback_on_step_end)
        self._memory.commit((record,), "background")
        return self.image

    def start_from_image(self, image, prompt: str = "", *, seed: int | None = None,
                         width: int | None = None, height: int | None = None, **settings) -> Image.Image:
        """Start from a photo: it becomes layer 0, with a trajectory later edits can follow.

        The image is converted to RGB (alpha is composited on white), centre-cropped to the target
        aspect and resized to (width, height), by default the model's native size. `prompt`
        describes the photo (it is the background prompt regions fall back to).
        """
        config = self._settings(settings)
        seed = _check_seed(seed) if seed is not None else secrets.randbelow(2**31)
        default_w, default_h = self.pipeline.default_size
        pixels = to_rgb_array(image, (int(width or default_w), int(height or default_h)))
        self.pipeline.check_prompt_length(prompt)
        started = time.perf_counter()
        trajectory, schedule = self.pipeline.trajectory_from_image(
            pixels, num_inference_steps=config.num_inference_steps, scheduler=config.scheduler, seed=seed)
        prompt_embeds, extras = self.pipeline.encode_prompt(prompt).storage()
        out = LayeredPipelineOutput(
            image=pixels, decoded=pixels, trajectory=trajectory, schedule=schedule, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=None, info={"bcg": "none", "unet_evals": 0, "source": "photo"},
            extra_tensors=extras)
        full = np.ones(pixels.shape[:2], dtype=bool)
        record = self._record(prompt, config, seed, out, time.perf_counter() - started, kind="background",
                              user_mask=full, region=full, soft=full.astype(np.float32))
        self._memory.commit((record,), "photo")
        return self.image

    def edit(self, prompt: str, mask, *, seed: int | None = None, callback_on_step_end: Callable | None = None,
             **settings) -> Image.Image:
        """Paint `prompt` inside `mask` on top of the current image, as a new layer.

        `mask`: a PIL image or numpy array of the image's size (painted = edit; values are
        binarised at half their range), or a box (x0, y0, x1, y1) in pixels, x horizontal.
        With preserve="pixels" (default) no pixel outside the (dilated) mask changes.
        `seed`: None shares the session's initial noise (keeps untouched regions coherent).
        """
        record = self._new_edit("edit", prompt, mask, seed, callback_on_step_end, settings)
        self._memory.push(record)
        _warn_if_nothing_drawn(record)
        return self.image

    def preview_edit(self, prompt: str, mask, *, seed: int | None = None,
                     callback_on_step_end: Callable | None = None, **settings) -> LayerRecord:
        """The layer edit() would add, without adding it: the session does not change.

        For variations: preview a few seeds, then edit() with the chosen seed paints that same layer (the
        pipeline is deterministic). Warns NothingDrawnWarning as edit() does.
        """
        record = self._new_edit("preview an edit", prompt, mask, seed, callback_on_step_end, settings)
        _warn_if_nothing_drawn(record)
        return record

    # ------------------------------------------------------------------ changing earlier layers
    def replace(self, index: int, *, prompt: str | None = None, mask=None, seed: int | None = None,
                layers_above: str = "keep", callback_on_step_end: Callable | None = None, **settings) -> Image.Image:
        """Re-edit layer `index` with a new prompt, mask, seed or settings.

        Layer 0 is repainted as a background (the image size stays). Omitted arguments keep the
        layer's own. `layers_above`: "keep" (default) leaves the layers above as they were, their own
        pixels re-composited over the new result, as in a painting program; "regenerate" runs their
        edits again on it. One undoable step: undo restores the exact earlier stack.
        """
        check_layers_above(layers_above)
        old = self._layer(index, "replace")
        config = EditSettings.from_dict(dict(old.settings)).updated(**settings)
        below = self.layers[:index]
        if index == 0:
            new_seed = old.seed if seed is None else _check_seed(seed)
            record = self._paint_background(old.prompt if prompt is None else prompt, config, new_seed,
                                            self.size, callback_on_step_end)
        else:
            binary = masks.to_binary(mask, self.size) if mask is not None else np.asarray(old.user_mask) > 0
            own_seed = _own_seed(old) if seed is None else _check_seed(seed)
            record = self._paint_edit(old.prompt if prompt is None else prompt, binary, config, own_seed, below,
                                      callback_on_step_end)
            record = record if old.visible else record.replace(visible=False)
            _warn_if_nothing_drawn(record)
        self._memory.commit(self._replay(below + (record,), self.layers[index:], layers_above), f"replace layer {index}")
        return self.image

    def remove(self, index: int, *, layers_above: str = "keep") -> Image.Image:
        """Delete layer `index` (not the background); `layers_above` as in replace()."""
        check_layers_above(layers_above)
        self._layer(index, "remove")
        if index == 0:
            raise ValueError("the background cannot be removed; use replace(0, prompt=...) to repaint it")
        self._memory.commit(self._replay(self.layers[:index], self.layers[index:], layers_above), f"remove layer {index}")
        return self.image

    def set_visible(self, index: int, visible: bool, *, layers_above: str = "keep") -> Image.Image:
        """Hide or show layer `index`; `layers_above` as in replace() ("regenerate" also repaints a shown layer)."""
        check_layers_above(layers_above)
        old = self._layer(index, "hide or show")
        if index == 0:
            raise ValueError("the background cannot be hidden")
        if bool(visible) == old.visible:
            return self.image
        below = self.layers[:index]
        regenerate = visible and layers_above == "regenerate"
        record = self._repaint(old, below) if regenerate else old.replace(visible=bool(visible))
        label = f"{'show' if visible else 'hide'} layer {index}"
        self._memory.commit(self._replay(below + (record,), self.layers[index:], layers_above), label)
        return self.image

    def undo(self) -> str:
        """Step back one operation; returns what was undone. Undoing past the background is an error."""
        return self._memory.undo()

    def redo(self) -> str:
        """Re-apply the last undone operation; returns what was redone."""
        return self._memory.redo()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the layer stack to a project directory, or a single file when `path` ends in .lep.

        The write is atomic: an interrupted save leaves the previous project at `path` intact.
        """
        self._require_background("save")
        meta = {"model": self.model, "model_identity": self.pipeline.model_identity,
                "defaults": self._defaults.to_dict()}
        save_project(path, self.layers, meta)
        return Path(path)

    def export(self, path: str | Path) -> Path:
        """Write the layers for other tools; the extension picks the format: .ora (Krita, GIMP), .psd (Photoshop)
        or .zip (PNGs + manifest). Atomic like save(); save() stays the lossless route (editor/export.py)."""
        self._require_background("export")
        return export_layers(path, self.layers, {"model": self.model, "defaults": self._defaults.to_dict()})

    @classmethod
    def load(cls, path: str | Path, pipeline: LayeredPipeline | None = None, device=None, dtype=None, *,
             guidance_adapter: str | Path | bool | None = None) -> Session:
        """Open a saved project; by default reloads the model recorded in it (see from_pretrained for
        `guidance_adapter`)."""
        layers, meta = load_project(path)
        model = meta.get("model")
        if model is not None and not isinstance(model, str):
            raise ProjectError(f"{path}: 'model' must be a string, got {type(model).__name__}")
        try:
            defaults = EditSettings.from_dict(meta.get("defaults") or {})
        except (TypeError, ValueError) as error:
            raise ProjectError(f"{path}: invalid session settings: {error}") from error
        if pipeline is None:
            pipeline = load_pipeline(model, device=device, dtype=dtype, guidance_adapter=guidance_adapter)
        session = cls(pipeline, model=model, defaults=defaults)
        session._check_identity(meta.get("model_identity"), path)
        session._check_compatible(layers, path)
        if layers:
            session._memory.commit(tuple(layers), "load")
            session._memory.clear_history()
        return session

    # ------------------------------------------------------------------ internals
    def _settings(self, changes: dict) -> EditSettings:
        """The defaults with `changes`; guidance="fast" runs its adapter's own step count unless steps were given."""
        config = self._defaults.updated(**changes)
        fast_steps = getattr(self.pipeline, "fast_steps", None)
        if config.guidance == "fast" and fast_steps and "num_inference_steps" not in changes:
            config = config.updated(num_inference_steps=fast_steps, scheduler="ddim")
        return config

    def _require_background(self, action: str) -> None:
        if not self.layers:
            raise MemoryStateError(f"cannot {action}: the session has no background yet; call generate() or "
                                   "start_from_image() first")

    def _layer(self, index, action: str) -> LayerRecord:
        self._require_background(action)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"layer index must be an integer, got {index!r}")
        if not 0 <= index < len(self.layers):
            raise IndexError(f"cannot {action} layer {index}: the session has layers 0..{len(self.layers) - 1}")
        return self.layers[index]

    def _new_edit(self, action: str, prompt, mask, seed, callback, settings: dict) -> LayerRecord:
        self._require_background(action)
        own_seed = None if seed is None else _check_seed(seed)
        return self._paint_edit(prompt, masks.to_binary(mask, self.size), self._settings(settings),
                                own_seed, self.layers, callback)

    def _paint_background(self, prompt, config: EditSettings, seed: int, size, callback) -> LayerRecord:
        width, height = size
        out, seconds = self._run(prompt, config, seed=seed, height=height, width=width, edit=None,
                                 callback_on_step_end=callback)
        full = np.ones((height, width), dtype=bool)
        return self._record(prompt, config, seed, out, seconds, kind="background", user_mask=full, region=full,
                            soft=full.astype(np.float32))

    def _paint_edit(self, prompt, binary: np.ndarray, config: EditSettings, own_seed: int | None,
                    below: tuple[LayerRecord, ...], callback) -> LayerRecord:
        """One edit on top of the visible layers of `below`. own_seed None = share layer 0's noise."""
        region, soft = masks.refine(binary, config.mask_dilation, config.mask_feather)
        if region.all():
            warnings.warn("the mask covers the whole image: this edit repaints everything (no background kept)",
                          stacklevel=3)
        visible = [layer for layer in below if layer.visible]
        base = visible[-1]
        edit = EditRegion(region=region, soft_mask=soft, previous_image=np.asarray(base.image),
                          previous_trajectory=base.trajectory, previous_schedule=base.schedule,
                          background=config.background, mask_fit=config.mask_fit, feather_px=config.mask_feather,
                          earlier_regions=[(TextConditioning.from_storage(layer.prompt_embeds, layer.extra_tensors),
                                            np.asarray(layer.mask) > 0) for layer in visible])
        seed = below[0].seed if own_seed is None else own_seed
        height, width = region.shape
        out, seconds = self._run(prompt, config, seed=seed, height=height, width=width, edit=edit,
                                 callback_on_step_end=callback)
        out.info["shares_session_seed"] = own_seed is None
        out.info["changed_pixels"] = changed_pixels(edit.previous_image, out.image, region)
        return self._record(prompt, config, seed, out, seconds, kind="edit", user_mask=binary, region=region,
                            soft=out.mask)

    def _repaint(self, record: LayerRecord, below: tuple[LayerRecord, ...]) -> LayerRecord:
        """Run an edit layer again, with its own prompt, mask, seed and settings, on a new stack below."""
        return self._paint_edit(record.prompt, np.asarray(record.user_mask) > 0,
                                EditSettings.from_dict(dict(record.settings)), _own_seed(record), below, None)

    def _replay(self, below: tuple[LayerRecord, ...], changed: tuple[LayerRecord, ...],
                layers_above: str) -> tuple[LayerRecord, ...]:
        """The new stack after a change: `below` (ending with the changed layer, if it stays) and the layers above.

        `changed` is the old stack from the changed layer up: its first record is what the layers above used to
        sit on. "keep" moves each of them onto the new stack (restack); "regenerate" repaints the visible ones.
        Hidden layers are always restacked, so showing one later needs no repaint.
        """
        stack, old = tuple(below), self.layers[:len(self.layers) - len(changed) + 1]
        for record in changed[1:]:
            if layers_above == "regenerate" and record.visible:
                moved = self._repaint(record, stack)
            else:
                moved = restack(record, visible_under(old), visible_under(stack), self._trajectory_of_image)
            stack, old = stack + (moved,), old + (record,)
        return stack

    def _trajectory_of_image(self, image: np.ndarray, record: LayerRecord):
        """A layer's memory rebuilt from pixels (when it cannot be blended from the layers' trajectories)."""
        settings = EditSettings.from_dict(dict(record.settings))
        return self.pipeline.trajectory_from_image(image, num_inference_steps=settings.num_inference_steps,
                                                   scheduler=settings.scheduler, seed=self.layers[0].seed)

    def _run(self, prompt: str, config: EditSettings, *, seed: int, height: int, width: int,
             edit: EditRegion | None, callback_on_step_end) -> tuple[LayeredPipelineOutput, float]:
        started = time.perf_counter()
        out = self.pipeline(
            prompt, config.negative_prompt, num_inference_steps=config.num_inference_steps,
            guidance_scale=config.guidance_scale, scheduler=config.scheduler, seed=seed, height=height, width=width,
            edit=edit, free_steps_ratio=config.free_steps_ratio, preserve=config.preserve,
            attention=config.attention, guidance=config.guidance, callback_on_step_end=callback_on_step_end,
            bcg_mask=config.bcg_mask, region_routing=config.routing)
        return out, time.perf_counter() - started

    def _record(self, prompt: str, config: EditSettings, seed: int, out: LayeredPipelineOutput, seconds: float, *,
                kind: str, user_mask: np.ndarray, region: np.ndarray, soft: np.ndarray) -> LayerRecord:
        return LayerRecord(
            prompt=prompt, negative_prompt=config.negative_prompt, seed=seed, settings=config.to_dict(),
            schedule=out.schedule, prompt_embeds=out.prompt_embeds,
            negative_prompt_embeds=out.negative_prompt_embeds, extra_tensors=out.extra_tensors,
            user_mask=user_mask.astype(np.uint8) * 255, mask=soft.astype(np.float32),
            trajectory=tuple(out.trajectory), image=out.image, kind=kind,
            info={**out.info, "seconds": round(seconds, 4), "region_pixels": int(region.sum())})

    def _check_identity(self, saved, path) -> None:
        """A project records the model it was made with (family, architecture, weights); another model is refused.
        Projects saved before the record existed are checked by their latent shapes only."""
        if saved is None:
            return
        if not isinstance(saved, dict):
            raise ProjectError(f"{path}: 'model_identity' must be an object, got {type(saved).__name__}")
        try:
            self.pipeline.check_model_identity(saved)
        except ValueError as error:
            raise ProjectError(f"{path}: {error}; open it with the model it was made with ({self.model!r})") from None

    def _check_compatible(self, layers, path) -> None:
        """A project's latents must fit this pipeline's latent space, or BCG would read garbage."""
        for index, layer in enumerate(layers):
            height, width = layer.image.shape[:2]
            factor = self.pipeline.vae_scale_factor
            expected = (self.pipeline.latent_channels, height // factor, width // factor)
            if tuple(layer.trajectory[0].shape[-3:]) != expected:
                raise ProjectError(
                    f"{path}: layer {index} holds latents of shape {tuple(layer.trajectory[0].shape[-3:])} but this "
                    f"model makes {expected}; open the project with the model it was made with ({self.model!r})")


def _warn_if_nothing_drawn(record: LayerRecord) -> None:
    changed, region = record.info["changed_pixels"], record.info["region_pixels"]
    if changed < nothing_drawn_limit(region):
        warnings.warn(NothingDrawnWarning(
            f"nothing was drawn for {record.prompt!r}: the edit left its region essentially unchanged ({changed} of "
            f"{region} pixels changed clearly); try a larger mask, another seed or a more specific prompt (undo "
            "removes the layer)"), stacklevel=3)


def _own_seed(record: LayerRecord) -> int | None:
    """A layer's seed for a replay: None when it shared the session's noise (so it follows layer 0's seed)."""
    return None if record.info.get("shares_session_seed") else record.seed


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {seed}")
    return int(seed)
