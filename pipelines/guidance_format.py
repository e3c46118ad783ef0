"""What a guidance adapter is: its on-disk format, the scale embedding and the LoRA gain, shared by inference
(pipelines/guidance.py) and training (training/distill/).

A guidance adapter is a LoRA on the UNet plus a zero-initialised projection of the guidance scale into the
timestep embedding (diffusers' `time_cond_proj_dim`, as in its LCM pipelines: the scale s is embedded as s - 1).
The LoRA branch is multiplied by a gain g(s) = s - 1 (LORA_GAINS): CFG moves the conditional output by
(s - 1) (cond - uncond), so the LoRA learns that direction once and the scale sets how far to go; at s = 1 the
student is exactly the teacher's conditional pass. (Why this gain and this module set: assets/embedded/MODEL_CARD.md.)

On disk (a folder): `guidance_lora.safetensors` (the LoRA tensors as diffusers' `save_lora_adapter` writes them,
the LoRA config in its metadata), `guidance_projection.safetensors` (the projection weight) and `guidance.json`
(embedding size, scale range, rank, base model, training record). Loading is here; writing is training's
(training/distill/adapter.py).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from .families import output_layer, timestep_embedding

ADAPTER_NAME = "guidance"
FORMAT = "layered-edit-guidance-adapter/2"
FORMATS = ("layered-edit-guidance-adapter/1", FORMAT)  # 1: no guidance head
LORA_FILE = "guidance_lora.safetensors"
PROJECTION_FILE = "guidance_projection.safetensors"
HEAD_FILE = "guidance_head.safetensors"  # adapters with a guidance head (format 2)
CONFIG_FILE = "guidance.json"
EMBEDDING_DIM = 256  # sinusoidal features of s - 1 (diffusers' LCM default)
MIN_SCALE = 1.0
MAX_SCALE = 10.0  # default upper end of the trained scale range
# Attention projections plus the resnet convolutions and feed-forwards (LCM-LoRA's set).
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj", "proj_in", "proj_out",
                "ff.net.0.proj", "ff.net.2")
# How the LoRA branch is scaled with the guidance scale s: "scale-1" multiplies it by s - 1 (default),
# "one" leaves it alone (the scale then acts only through the timestep embedding).
LORA_GAINS = ("scale-1", "one")
LORA_GAIN = "scale-1"


def guidance_embedding(scale: float | torch.Tensor, dim: int = EMBEDDING_DIM, *, batch: int = 1,
                       device=None, dtype=torch.float32) -> torch.Tensor:
    """[batch, dim] sinusoidal embedding of s - 1, as diffusers' `get_guidance_scale_embedding`.

    `scale` is a number (repeated `batch` times) or a 1-D tensor of scales, one per row.
    """
    w = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if w.numel() == 1:
        w = w.expand(batch)
    w = (w - 1.0) * 1000.0
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding.to(device=device, dtype=dtype)


def lora_gain(scale: float | torch.Tensor, rule: str = LORA_GAIN) -> torch.Tensor:
    """g(s), the factor on the LoRA branch (one per scale)."""
    if rule not in LORA_GAINS:
        raise ValueError(f"unknown LoRA gain rule {rule!r}; known: {LORA_GAINS}")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return scale - 1.0 if rule == "scale-1" else torch.ones_like(scale)


def as_epsilon(output: torch.Tensor, sample: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str):
    """The noise prediction behind a UNet output: eps itself, or from v (eps = sqrt(a) v + sqrt(1 - a) x_t).

    CFG is linear in either space, so eps of the guided v is the guided eps; errors are compared in eps,
    the space the distillation papers report, whatever the model predicts.
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type != "v_prediction":
        raise ValueError(f"relative errors are defined for epsilon and v_prediction models, not {prediction_type!r}")
    alpha = _alpha(alpha_cumprod, output)
    return alpha.sqrt() * output.float() + (1 - alpha).sqrt() * sample.float()


def _alpha(alpha_cumprod: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return alpha_cumprod.to(like.device, torch.float32).reshape(-1, *[1] * (like.ndim - 1))


def as_x0(output: torch.Tensor, sample: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str):
    """The clean latent a UNet output predicts from `sample` (x0 = (x_t - sqrt(1 - a) eps) / sqrt(a), or
    sqrt(a) x_t - sqrt(1 - a) v): where the high-noise steps decide the layout, so errors there show."""
    alpha, output, sample = _alpha(alpha_cumprod, output), output.float(), sample.float()
    if prediction_type == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * output
    if prediction_type == "epsilon":
        return (sample - (1 - alpha).sqrt() * output) / alpha.sqrt().clamp_min(1e-4)
    raise ValueError(f"x0 is defined for epsilon and v_prediction models, not {prediction_type!r}")


def as_velocity(output: torch.Tensor, sample: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str):
    """v = sqrt(a) eps - sqrt(1 - a) x0 of a UNet output. For a fixed x_t, |dv|^2 = |dx0|^2 + |deps|^2: v errors
    are x0 errors at high noise and eps errors at low noise, so a v loss sees every step."""
    if prediction_type == "v_prediction":
        return output.float()
    alpha = _alpha(alpha_cumprod, output)
    eps = as_epsilon(output, sample, alpha_cumprod, prediction_type)
    return alpha.sqrt() * eps - (1 - alpha).sqrt() * as_x0(output, sample, alpha_cumprod, prediction_type)


def add_guidance_projection(unet, dim: int = EMBEDDING_DIM) -> nn.Linear:
    """Give `unet` a zero-initialised guidance-scale projection (diffusers' `time_cond_proj_dim`).

    `TimestepEmbedding.forward` adds `cond_proj(timestep_cond)` to the timestep features when the
    UNet is called with `timestep_cond`; zero weights make the UNet exactly the teacher until trained,
    and without `timestep_cond` the projection is never applied. `unet` may be any family's denoiser
    (pipelines.families.timestep_embedding finds its timestep embedding).
    """
    embedding = timestep_embedding(unet)
    projection = nn.Linear(dim, embedding.linear_1.in_features, bias=False)
    nn.init.zeros_(projection.weight)
    embedding.cond_proj = projection.to(device=embedding.linear_1.weight.device, dtype=embedding.linear_1.weight.dtype)
    if "time_cond_proj_dim" in unet.config:  # UNets record it; transformers have no such setting
        unet.register_to_config(time_cond_proj_dim=dim)
    return embedding.cond_proj


def remove_guidance_projection(unet) -> None:
    timestep_embedding(unet).cond_proj = None
    if "time_cond_proj_dim" in unet.config:
        unet.register_to_config(time_cond_proj_dim=None)


def make_guidance_head(denoiser) -> nn.Module:
    """A zero-initialised copy of the denoiser's last layer: the guidance head.

    With a head the student is `last(h) + (s - 1) head(h)` on the last features h of one pass: exactly linear in s,
    as CFG's `cond + (s - 1) (cond - uncond)` is. The head learns the guidance direction, the LoRA (its gain fixed)
    makes h carry it. Without one, the LoRA's weights are scaled by s - 1, and a network is far from linear in its
    weights at s = 7.5 (the reason format 1 adapters missed most at high scales: assets/embedded/MODEL_CARD.md).
    """
    import copy

    last = output_layer(denoiser)
    head = copy.deepcopy(last)
    with torch.no_grad():
        for param in head.parameters():
            param.zero_()
    return head.to(device=last.weight.device, dtype=last.weight.dtype)


@contextmanager
def guidance_head_applied(denoiser, head: nn.Module | None, gains: torch.Tensor | float):
    """While open, the denoiser's output is `last(h) + gains * head(h)` (`gains` one per row, or one number)."""
    if head is None:
        yield
        return

    def add_head(module, inputs, output):
        gain = torch.as_tensor(gains, device=output.device, dtype=output.dtype)
        if gain.ndim:
            gain = gain.view(-1, *([1] * (output.dim() - 1)))
        return output + gain * head(inputs[0])

    handle = output_layer(denoiser).register_forward_hook(add_head)
    try:
        yield
    finally:
        handle.remove()


def unet_fingerprint(unet) -> str:
    """A short hash of a few UNet weights, to notice an adapter trained on another checkpoint."""
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        name = name.replace(".base_layer", "")  # the same weight, wrapped by peft
        if name.startswith(("conv_in.", "conv_out.", "time_embedding.linear_",  # UNets
                            "pos_embed.proj.", "proj_out.", "adaln_single.emb.timestep_embedder.linear_")
                           ) and "lora_" not in name:
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- reading a folder
def read_guidance_config(folder: str | Path) -> dict:
    """guidance.json of an adapter folder, checked for the fields loading needs."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a guidance adapter (no {CONFIG_FILE}); train one with "
                                "`python -m training distill --model MODEL --out FOLDER`")
    meta = json.loads(path.read_text())
    if meta.get("format") not in FORMATS:
        raise ValueError(f"{path}: unknown adapter format {meta.get('format')!r}, expected one of {FORMATS}")
    for name in ("embedding_dim", "scale_range", "rank"):
        if name not in meta:
            raise ValueError(f"{path}: missing field {name!r}")
    for name in (LORA_FILE, PROJECTION_FILE) + ((HEAD_FILE,) if meta.get("head") else ()):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: missing {name}")
    return meta


def load_projection_weight(folder: str | Path) -> torch.Tensor:
    return load_file(str(Path(folder) / PROJECTION_FILE))["weight"]


def load_guidance_head(denoiser, folder: str | Path) -> nn.Module | None:
    """The adapter's guidance head (None for a format-1 adapter, which has none)."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        return None
    head = make_guidance_head(denoiser)
    tensors = load_file(str(path))
    expected = {name: tuple(value.shape) for name, value in head.state_dict().items()}
    if {name: tuple(value.shape) for name, value in tensors.items()} != expected:
        raise ValueError(f"{path}: guidance head tensors do not fit this model's last layer {expected}")
    head.load_state_dict({name: value.to(head.weight.dtype) for name, value in tensors.items()})
    return head


def attach_guidance_adapter(unet, folder: str | Path) -> dict:
    """Load an adapter folder into `unet` as a live peft adapter named "guidance" (+ the projection, and the guidance
    head as `unet.guidance_head` when the adapter has one).

    Used for training (resume) and measurement; pipelines use `load_guidance_adapter`, which fuses it.
    """
    meta = read_guidance_config(folder)
    weight = load_projection_weight(folder)
    expected = (timestep_embedding(unet).linear_1.in_features, int(meta["embedding_dim"]))
    if tuple(weight.shape) != expected:
        raise ValueError(f"{folder}: guidance projection has shape {tuple(weight.shape)}, this UNet needs {expected}")
    projection = add_guidance_projection(unet, int(meta["embedding_dim"]))
    with torch.no_grad():
        projection.weight.copy_(weight)
    unet.load_lora_adapter(str(folder), weight_name=LORA_FILE, adapter_name=ADAPTER_NAME, prefix=None)
    head = load_guidance_head(unet, folder)
    if head is not None:
        unet.guidance_head = head  # a submodule while attached (trained with the LoRA); inference takes it off
    if meta.get("base_unet_fingerprint") not in (None, unet_fingerprint(unet)):
        warnings.warn(f"the guidance adapter in {folder} was trained on another UNet checkpoint; distilled "
                      "results may be off: retrain it with `python -m training distill`", stacklevel=3)
    return meta
