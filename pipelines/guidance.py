"""Distilled classifier-free guidance at inference: one UNet pass per step instead of two.

A guidance adapter (pipelines/guidance_format.py) is trained by `python -m training distill` to reproduce
`uncond + s * (cond - uncond)` for any s in [1, max_scale] from the prompt alone, so one adapter serves every
scale. The teacher is the same UNet without the adapter: guidance="cfg" runs exactly it.

At inference each LoRA layer's dense delta is kept as a buffer on its module; a distilled call swaps
in W + g(s) delta for its duration and the original weights back afterwards. Both modes then run
the UNet's plain layers at full speed, and the teacher's own weights are never modified, so
guidance="cfg" stays bit-identical to a pipeline without an adapter. The extra memory is one copy
of the targeted weights, two during a distilled call.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .guidance_format import (ADAPTER_NAME, CONFIG_FILE, LORA_GAIN, attach_guidance_adapter, guidance_embedding,
                              lora_gain, read_guidance_config, remove_guidance_projection)

GUIDANCE_MODES = ("cfg", "distilled")  # two UNet rows per step (uncond + cond), or one with the adapter
DELTA_BUFFER = "guidance_delta_weight"
NEGATIVE_PROMPT_ERROR = ("distilled guidance has no negative prompt; the adapter learned the empty prompt as its "
                         "unconditional half. Clear negative_prompt or use guidance='cfg'")


class GuidanceAdapter:
    """A guidance adapter ready for inference: W + g(s) delta swapped in for a distilled call, out afterwards."""

    def __init__(self, unet, modules: list[nn.Module], meta: dict, folder: Path):
        self.unet = unet
        self.modules = modules  # the adapted layers, each holding its LoRA delta as a buffer
        self.meta = meta
        self.folder = folder
        self.gain_rule = meta.get("lora_gain", LORA_GAIN)
        lora_gain(1.0, self.gain_rule)  # an unknown rule is an error at load time

    @property
    def scale_range(self) -> tuple[float, float]:
        low, high = self.meta["scale_range"]
        return float(low), float(high)

    def check_scale(self, guidance_scale: float) -> None:
        high = self.scale_range[1]
        if guidance_scale > high + 1e-6:
            raise ValueError(f"the guidance adapter was trained for guidance_scale up to {high:g}, got "
                             f"{guidance_scale:g}; lower it, use guidance='cfg', or retrain with "
                             "`python -m training distill --max-scale`")

    def embedding(self, guidance_scale: float, batch: int, device, dtype) -> torch.Tensor:
        return guidance_embedding(guidance_scale, int(self.meta["embedding_dim"]), batch=batch, device=device,
                                  dtype=dtype)

    @contextmanager
    def applied(self, guidance_scale: float):
        """The student at `guidance_scale`: every adapted layer computes with W + g(s) delta for the duration."""
        gain = float(lora_gain(guidance_scale, self.gain_rule))
        originals = [module.weight for module in self.modules]
        try:
            with torch.no_grad():
                for module in self.modules:
                    delta = getattr(module, DELTA_BUFFER)
                    fused = (module.weight.float() + gain * delta.float()).to(module.weight.dtype)
                    module.weight = nn.Parameter(fused, requires_grad=False)
            yield
        finally:
            for module, weight in zip(self.modules, originals):
                module.weight = weight


def load_guidance_adapter(pipeline, folder: str | Path) -> GuidanceAdapter:
    """Load a guidance adapter folder into `pipeline` (replacing any earlier one) and fuse it.

    After this `pipeline(..., guidance="distilled")` runs one UNet pass per step and
    `pipeline.has_guidance_adapter` is True; guidance="cfg" still runs the unmodified UNet.
    """
    folder = Path(folder)
    family = read_guidance_config(folder).get("family")
    if family not in (None, pipeline.family.name):
        raise ValueError(f"the guidance adapter in {folder} was trained on a {family!r} model; this is a "
                         f"{pipeline.family.name!r} model: train one for it with `python -m training distill`")
    unload_guidance_adapter(pipeline)
    unet = pipeline.denoiser
    try:
        meta = attach_guidance_adapter(unet, folder)
        modules = _deltas_into_buffers(unet)
        adapter = GuidanceAdapter(unet, modules, meta, folder)
    except Exception:
        _drop_peft_layers(unet)
        remove_guidance_projection(unet)
        raise
    pipeline.guidance_adapter = adapter
    return pipeline.guidance_adapter


def unload_guidance_adapter(pipeline) -> None:
    """Remove a loaded adapter: the UNet is the plain teacher again."""
    adapter = getattr(pipeline, "guidance_adapter", None)
    if adapter is None:
        return
    for module in adapter.modules:
        delattr(module, DELTA_BUFFER)
    remove_guidance_projection(pipeline.denoiser)
    pipeline.guidance_adapter = None


def _deltas_into_buffers(unet) -> list[nn.Module]:
    """Store every LoRA layer's dense delta (B A x scaling) as a buffer on its base layer, then remove the
    peft wrappers (buffers follow the UNet's .to())."""
    from peft.tuners.lora import LoraLayer

    adapted = []
    for module in unet.modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            base = module.get_base_layer()
            with torch.no_grad():
                delta = module.get_delta_weight(ADAPTER_NAME).to(base.weight.dtype)
            base.register_buffer(DELTA_BUFFER, delta, persistent=False)
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


def find_adapter_folder(model_folder: str | Path) -> Path | None:
    """`<model folder>/guidance` when it holds an adapter (the shipped model keeps its adapter there)."""
    candidate = Path(model_folder) / "guidance"
    return candidate if (candidate / CONFIG_FILE).is_file() else None
