"""Teacher and student: the same UNet with the guidance adapter off (CFG, two rows) and on (one row); making the
trainable adapter, and writing it to disk in the format pipelines/guidance_format.py reads."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import safetensors.torch
import torch

from memory import atomic_directory
from pipelines.families import timestep_embedding
from pipelines.guidance_format import (ADAPTER_NAME, CONFIG_FILE, FORMAT, HEAD_FILE, LORA_FILE, LORA_GAIN,
                                       LORA_TARGETS, MAX_SCALE, MIN_SCALE, PROJECTION_FILE, add_guidance_projection,
                                       attach_guidance_adapter, guidance_embedding, guidance_head_applied, lora_gain,
                                       make_guidance_head, read_guidance_config, unet_fingerprint)

from .config import DistillConfig


def lora_config(rank: int, targets=LORA_TARGETS, alpha: float | None = None):
    """peft LoRA settings of a guidance adapter (B starts at zero: the student starts as the teacher)."""
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                      target_modules=list(targets), init_lora_weights=True)


@contextmanager
def scaled_lora(unet, gains: torch.Tensor):
    """Multiply every live (peft) guidance-LoRA branch by `gains`, one per batch row."""
    from peft.tuners.lora import LoraLayer

    def scale_rows(module, inputs, output):
        return output * gains.to(output.device, output.dtype).view(-1, *([1] * (output.dim() - 1)))

    handles = [module.lora_A[ADAPTER_NAME].register_forward_hook(scale_rows) for module in unet.modules()
               if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def teacher_guided(family, latents, t, cond, uncond, scales) -> torch.Tensor:
    """CFG output of the teacher (adapter off, no scale embedding): uncond + s (cond - uncond), one s per row.

    `family` is the pipeline's model family (it calls the denoiser); `cond` and `uncond` are packed prompts
    (data.encode_prompts)."""
    batch, unet = latents.shape[0], family.denoiser
    adapter = getattr(unet, "peft_config", {}).get(ADAPTER_NAME) is not None
    if adapter:
        unet.disable_adapters()
    try:
        text = family.unpack_text(torch.cat([uncond.expand(batch, -1, -1), cond]))
        out = family.predict(torch.cat([latents, latents]), torch.cat([t, t]), text)
    finally:
        if adapter:
            unet.enable_adapters()
    uncond_out, cond_out = out.float().chunk(2)
    return uncond_out + scales.float().view(-1, 1, 1, 1) * (cond_out - uncond_out)


@contextmanager
def student(unet, scales: torch.Tensor, gain_rule: str = LORA_GAIN):
    """The live adapter as the student at `scales` (one per row): LoRA branch times g(s), guidance head times s - 1."""
    scales = scales.float()
    with scaled_lora(unet, lora_gain(scales, gain_rule)), \
            guidance_head_applied(unet, getattr(unet, "guidance_head", None), scales - 1.0):
        yield


def student_output(family, latents, t, cond, scales, embedding_dim: int, gain_rule: str = LORA_GAIN) -> torch.Tensor:
    """One pass with the adapter on and s - 1 embedded into the timestep embedding."""
    timestep_cond = guidance_embedding(scales, embedding_dim, device=latents.device, dtype=latents.dtype)
    with student(family.denoiser, scales, gain_rule):
        return family.predict(latents, t, family.unpack_text(cond), timestep_cond=timestep_cond)


def prepare_student(unet, out: Path, config: DistillConfig) -> dict:
    """Attach a trainable adapter: the one in `out` (resume) or a fresh zero-initialised one. Returns its record."""
    unet.requires_grad_(False)
    record = {}
    if not config.fresh and (out / CONFIG_FILE).is_file():
        record = read_guidance_config(out)
        saved = (int(record["rank"]), int(record["embedding_dim"]), record.get("lora_gain", LORA_GAIN),
                 record.get("mode", "guidance"))
        asked = (config.rank, config.embedding_dim, config.lora_gain, config.mode)
        if saved != asked or (record.get("head") and not config.head):
            raise ValueError(f"{out} holds an adapter with (rank, embedding size, LoRA gain, mode) {saved} and "
                             f"{'a' if record.get('head') else 'no'} guidance head; this run asks for {asked} "
                             f"{'with' if config.head else 'without'} a guidance head: pass the same, or --fresh to "
                             "start over")
        attach_guidance_adapter(unet, out)
        if config.head and not hasattr(unet, "guidance_head"):
            unet.guidance_head = make_guidance_head(unet)  # a format-1 adapter gains a head (zero: same outputs)
    else:
        add_guidance_projection(unet, config.embedding_dim)
        unet.add_adapter(lora_config(config.rank, config.targets, config.alpha), adapter_name=ADAPTER_NAME)
        if config.head:
            unet.guidance_head = make_guidance_head(unet)
    unet.set_adapter(ADAPTER_NAME)
    for name, param in unet.named_parameters():
        if "lora_" in name or "cond_proj" in name or name.startswith("guidance_head."):
            param.requires_grad_(True)  # add_adapter froze the projection with the rest
            param.data = param.data.float()  # trainable weights stay float32 (the base may be fp16)
    return record


# --------------------------------------------------------------------------------------------- on disk
def save_guidance_adapter(unet, folder: str | Path, **info) -> Path:
    """Write the live (peft) guidance adapter of `unet` to `folder`, atomically (the old folder or the new one).

    `info` goes into guidance.json next to the format fields (base model, steps, scale range ...).
    """
    folder = Path(folder)
    config = unet.peft_config[ADAPTER_NAME]
    projection = timestep_embedding(unet).cond_proj
    if projection is None:
        raise ValueError("the UNet has no guidance projection; call add_guidance_projection first")
    meta = {
        "format": FORMAT,
        "lora_gain": LORA_GAIN,
        "embedding_dim": int(projection.in_features),
        "scale_range": [MIN_SCALE, MAX_SCALE],
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "targets": sorted(config.target_modules),
        "base_unet_fingerprint": unet_fingerprint(unet),
        **info,
    }
    projection_weight = {"weight": projection.weight.detach().to("cpu", torch.float32).contiguous()}
    head = getattr(unet, "guidance_head", None)
    meta["head"] = head is not None
    with atomic_directory(folder, parents=True) as staging:  # synced, then swapped in whole
        (staging / LORA_FILE).write_bytes(_lora_bytes(unet))
        (staging / PROJECTION_FILE).write_bytes(safetensors.torch.save(projection_weight))
        if head is not None:
            tensors = {name: value.detach().to("cpu", torch.float32).contiguous()
                       for name, value in head.state_dict().items()}
            (staging / HEAD_FILE).write_bytes(safetensors.torch.save(tensors))
        (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def _lora_bytes(unet) -> bytes:
    """The LoRA tensors as diffusers' `save_lora_adapter` writes them (its LoRA config in the metadata,
    so `load_lora_adapter` rebuilds the adapter), without its `to(dtype=None)` call that logs a warning."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from peft.utils import get_peft_model_state_dict

    config = unet.peft_config[ADAPTER_NAME].to_dict()
    config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    tensors = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}
    return safetensors.torch.save(tensors, metadata=metadata)
