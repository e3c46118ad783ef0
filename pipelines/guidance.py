"""Distilled classifier-free guidance at inference: one UNet pass per step instead of two.

A guidance adapter (pipelines/guidance_format.py) is trained by `python -m training distill` to reproduce
`uncond + s * (cond - uncond)` for any s in [1, max_scale] from the prompt alone, so one adapter serves every
scale. The teacher is the same UNet without the adapter: guidance="cfg" runs exactly it.

At inference each LoRA layer's dense delta is kept as a buffer on its module; a distilled call swaps
in W + g(s) delta for its duration and the original weights back afterwards. Both modes then run
the UNet's plain layers at full speed, and the teacher's own weights are never modified, so
guidance="cfg" stays bit-identical to a pipeline without an adapter. The extra memory is one copy
of the targeted weights, two during a distilled call (and kept for adapters under FUSION_CACHE_BYTES).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .families import timestep_embedding
from .guidance_format import (ADAPTER_NAME, CONFIG_FILE, LORA_GAIN, attach_guidance_adapter, guidance_embedding,
                              guidance_head_applied, lora_gain, read_guidance_config, remove_guidance_projection)

# "cfg": two UNet rows per step (uncond + cond); "distilled": one row with the guidance adapter; "fast": one row
# for each of a few steps with the fast adapter (guidance and steps distilled together)
GUIDANCE_MODES = ("cfg", "distilled", "fast")
ADAPTER_SLOTS = {"distilled": "guidance", "fast": "fast"}  # mode -> adapter folder name inside a model folder
FUSION_CACHE_BYTES = 64 * 2**20  # adapters whose adapted weights fit keep their last fused copy
NEGATIVE_PROMPT_ERROR = ("distilled and fast guidance have no negative prompt; the adapter learned the empty prompt "
                         "as its unconditional half. Clear negative_prompt or use guidance='cfg'")


class GuidanceAdapter:
    """A guidance adapter ready for inference: W + g(s) delta swapped in for a student call (and its scale projection
    and guidance head attached), the teacher's own weights back afterwards."""

    def __init__(self, unet, modules: list[nn.Module], meta: dict, folder: Path, projection: nn.Module,
                 head: nn.Module | None, slot: str):
        self.unet = unet
        self.modules = modules  # the adapted layers, each holding this adapter's LoRA delta as a buffer
        self.meta = meta
        self.folder = folder
        self.projection = projection
        self.head = head
        self.buffer = delta_buffer(slot)
        self.fusion_cache: tuple | None = None  # (gain, original weights, fused weights) of the last call (small adapters)
        self.gain_rule = meta.get("lora_gain", LORA_GAIN)
        lora_gain(1.0, self.gain_rule)  # an unknown rule is an error at load time

    @property
    def scale_range(self) -> tuple[float, float]:
        low, high = self.meta["scale_range"]
        return float(low), float(high)

    @property
    def sample_steps(self) -> int | None:
        """The step count a fast adapter was distilled for (None: any)."""
        return self.meta.get("fast_steps") if self.meta.get("mode") == "fast" else None

    def check_scale(self, guidance_scale: float) -> None:
        low, high = self.scale_range
        if not low - 1e-6 <= guidance_scale <= high + 1e-6 and (self.sample_steps or guidance_scale > high):
            raise ValueError(f"the {self.meta.get('mode', 'guidance')} adapter was trained for guidance_scale in "
                             f"[{low:g}, {high:g}], got {guidance_scale:g}; change it, use guidance='cfg', or retrain "
                             "with `python -m training distill --min-scale/--max-scale`")

    def embedding(self, guidance_scale: float, batch: int, device, dtype) -> torch.Tensor:
        return guidance_embedding(guidance_scale, int(self.meta["embedding_dim"]), batch=batch, device=device,
                                  dtype=dtype)

    @contextmanager
    def applied(self, guidance_scale: float):
        """The student at `guidance_scale`: every adapted layer computes with W + g(s) delta for the duration."""
        gain = float(lora_gain(guidance_scale, self.gain_rule))
        originals = [module.weight for module in self.modules]
        embedding = timestep_embedding(self.unet)
        try:
            for module, fused in zip(self.modules, self.fused_weights(gain, originals)):
                module.weight = fused
            embedding.cond_proj = self.projection
            with guidance_head_applied(self.unet, self.head, guidance_scale - 1.0):
                yield
        finally:
            embedding.cond_proj = None
            for module, weight in zip(self.modules, originals):
                module.weight = weight


    @torch.no_grad()
    def fused_weights(self, gain: float, originals: list[nn.Parameter]) -> list[nn.Parameter]:
        """W + gain delta of every adapted layer. Small adapters keep the last result: fusing is a visible share of
        a few-step edit on a small model, and a second copy of their weights costs little (FUSION_CACHE_BYTES)."""
        if self.fusion_cache is not None:
            cached_gain, cached_originals, cached = self.fusion_cache
            # the same weights (not merely equal ids: the cache holds them, so a moved UNet never matches)
            if cached_gain == gain and all(a is b for a, b in zip(cached_originals, originals)):
                return cached
        fused = [nn.Parameter((weight.float() + gain * getattr(module, self.buffer).float()).to(weight.dtype),
                              requires_grad=False) for module, weight in zip(self.modules, originals)]
        if sum(weight.numel() * weight.element_size() for weight in originals) <= FUSION_CACHE_BYTES:
            self.fusion_cache = (gain, list(originals), fused)
        return fused


def delta_buffer(slot: str) -> str:
    return f"{slot}_delta_weight"


def load_guidance_adapter(pipeline, folder: str | Path, mode: str = "distilled") -> GuidanceAdapter:
    """Load an adapter folder into `pipeline` for guidance `mode` ("distilled" or "fast"), replacing any earlier one
    of that mode, and fuse it.

    After this `pipeline(..., guidance=mode)` runs one UNet pass per step; guidance="cfg" still runs the unmodified
    UNet. A guidance adapter and a fast adapter can be loaded side by side.
    """
    folder = Path(folder)
    meta = read_guidance_config(folder)
    family, kind = meta.get("family"), meta.get("mode", "guidance")
    if family not in (None, pipeline.family.name):
        raise ValueError(f"the guidance adapter in {folder} was trained on a {family!r} model; this is a "
                         f"{pipeline.family.name!r} model: train one for it with `python -m training distill`")
    if (kind == "fast") != (mode == "fast"):
        raise ValueError(f"{folder} holds a {kind!r} adapter; guidance={mode!r} needs a "
                         f"{'fast' if mode == 'fast' else 'guidance'} one (`python -m training distill --mode ...`)")
    unload_guidance_adapter(pipeline, mode)
    unet, slot = pipeline.denoiser, ADAPTER_SLOTS[mode]
    try:
        meta = attach_guidance_adapter(unet, folder)
        head = unet._modules.pop("guidance_head", None)
        projection = timestep_embedding(unet).cond_proj
        modules = _deltas_into_buffers(unet, delta_buffer(slot))
        adapter = GuidanceAdapter(unet, modules, meta, folder, projection, head, slot)
    except Exception:
        unet._modules.pop("guidance_head", None)
        _drop_peft_layers(unet)
        raise
    finally:
        remove_guidance_projection(unet)  # each adapter attaches its own projection only while applied
    pipeline.adapters[mode] = adapter
    return adapter


def unload_guidance_adapter(pipeline, mode: str = "distilled") -> None:
    """Remove a loaded adapter of `mode`: the UNet is the plain teacher again for that mode."""
    adapter = pipeline.adapters.pop(mode, None)
    if adapter is None:
        return
    for module in adapter.modules:
        delattr(module, adapter.buffer)


def _deltas_into_buffers(unet, buffer: str) -> list[nn.Module]:
    """Store every LoRA layer's dense delta (B A x scaling) as a buffer on its base layer, then remove the
    peft wrappers (buffers follow the UNet's .to())."""
    from peft.tuners.lora import LoraLayer

    adapted = []
    for module in unet.modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            base = module.get_base_layer()
            with torch.no_grad():
                delta = module.get_delta_weight(ADAPTER_NAME).to(base.weight.dtype)
            base.register_buffer(buffer, delta, persistent=False)
            adapted.append(base)
    if not adapted:
        raise ValueError("the guidance adapter matched no layer of this UNet")
    _drop_peft_layers(unet)
    return adapted


def _drop_peft_layers(unet) -> None:
    """Put the original layers back in place of peft's wrappers (their weights were never changed). diffusers'
    public `unload_lora` removes every peft layer and forgets the adapters' configs."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if hasattr(unet, "peft_config") or any(isinstance(module, BaseTunerLayer) for module in unet.modules()):
        unet.unload_lora()


def find_adapter_folder(model_folder: str | Path, mode: str = "distilled") -> Path | None:
    """`<model folder>/guidance` (or `/fast`) when it holds an adapter (the shipped model keeps its adapters there)."""
    candidate = Path(model_folder) / ADAPTER_SLOTS[mode]
    return candidate if (candidate / CONFIG_FILE).is_file() else None
