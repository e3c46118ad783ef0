"""Distilled classifier-free guidance: one UNet pass per step instead of two.

A guidance adapter is a LoRA on the UNet plus a zero-initialised projection of the guidance scale
into the timestep embedding (diffusers' `time_cond_proj_dim`, as in its LCM pipelines: the scale s
is embedded as s - 1). Trained by `python -m training distill` to reproduce
`uncond + s * (cond - uncond)` for any s in [1, max_scale] from the prompt alone, so one adapter
serves every scale. The teacher is the same UNet without the adapter: guidance="cfg" runs exactly it.

The LoRA branch is multiplied by a gain g(s) = s - 1 (LORA_GAINS): CFG moves the conditional output
by (s - 1) (cond - uncond), so the LoRA learns that direction once and the scale sets how far to go;
at s = 1 the student is exactly the teacher's conditional pass. (With a constant gain the scale
reaches the UNet only through the timestep embedding, and training was several times slower:
rel. error 0.33 vs 0.26 after 300 steps on the embedded model.)

On disk (a folder): `guidance_lora.safetensors` (written by diffusers' `save_lora_adapter`, the LoRA
config in its metadata), `guidance_projection.safetensors` (the projection weight) and
`guidance.json` (embedding size, scale range, rank, base model, training record).

At inference each LoRA layer's dense delta is kept as a buffer on its module; a distilled call swaps
in W + g(s) delta for its duration and the original weights back afterwards. Both modes then run
the UNet's plain layers at full speed, and the teacher's own weights are never modified, so
guidance="cfg" stays bit-identical to a pipeline without an adapter. The extra memory is one copy
of the targeted weights (the attention projections by default), two during a distilled call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .families import timestep_embedding

GUIDANCE_MODES = ("cfg", "distilled")  # two UNet rows per step (uncond + cond), or one with the adapter
ADAPTER_NAME = "guidance"
FORMAT = "layered-edit-guidance-adapter/1"
LORA_FILE = "guidance_lora.safetensors"
PROJECTION_FILE = "guidance_projection.safetensors"
CONFIG_FILE = "guidance.json"
EMBEDDING_DIM = 256  # sinusoidal features of s - 1 (diffusers' LCM default)
MIN_SCALE = 1.0
MAX_SCALE = 10.0  # default upper end of the trained scale range
# Attention projections plus the resnet convolutions and feed-forwards (LCM-LoRA's set): on the embedded model
# attention-only adapters stalled at a higher error than this set at the same training time.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj", "proj_in", "proj_out",
                "ff.net.0.proj", "ff.net.2")
DELTA_BUFFER = "guidance_delta_weight"
# How the LoRA branch is scaled with the guidance scale s: "scale-1" multiplies it by s - 1 (default),
# "one" leaves it alone (the scale then acts only through the timestep embedding).
LORA_GAINS = ("scale-1", "one")
LORA_GAIN = "scale-1"
NEGATIVE_PROMPT_ERROR = ("distilled guidance has no negative prompt; the adapter learned the empty prompt as its "
                         "unconditional half. Clear negative_prompt or use guidance='cfg'")


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


def as_epsilon(output: torch.Tensor, sample: torch.Tensor, alpha_cumprod: torch.Tensor, prediction_type: str):
    """The noise prediction behind a UNet output: eps itself, or from v (eps = sqrt(a) v + sqrt(1 - a) x_t).

    CFG is linear in either space, so eps of the guided v is the guided eps; errors are compared in eps,
    the space the distillation papers report, whatever the model predicts.
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type != "v_prediction":
        raise ValueError(f"relative errors are defined for epsilon and v_prediction models, not {prediction_type!r}")
    alpha = alpha_cumprod.to(output.device, torch.float32).reshape(-1, *[1] * (output.ndim - 1))
    return alpha.sqrt() * output.float() + (1 - alpha).sqrt() * sample.float()


def lora_gain(scale: float | torch.Tensor, rule: str = LORA_GAIN) -> torch.Tensor:
    """g(s), the factor on the LoRA branch (one per scale)."""
    if rule not in LORA_GAINS:
        raise ValueError(f"unknown LoRA gain rule {rule!r}; known: {LORA_GAINS}")
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return scale - 1.0 if rule == "scale-1" else torch.ones_like(scale)


@contextmanager
def scaled_lora(unet, gains: torch.Tensor):
    """Multiply every live (peft) guidance-LoRA branch by `gains`, one per batch row (training, measurement)."""
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


def lora_config(rank: int, targets=LORA_TARGETS, alpha: float | None = None):
    """peft LoRA settings of a guidance adapter (B starts at zero: the student starts as the teacher)."""
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                      target_modules=list(targets), init_lora_weights=True)


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


# --------------------------------------------------------------------------------------------- on disk
def save_guidance_adapter(unet, folder: str | Path, **info) -> Path:
    """Write the live (peft) guidance adapter of `unet` to `folder`, atomically.

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
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_lora(unet, tmp / LORA_FILE)
    save_file({"weight": projection.weight.detach().to("cpu", torch.float32).contiguous()}, str(tmp / PROJECTION_FILE))
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    _swap_in(tmp, folder)
    return folder


def _save_lora(unet, path: Path) -> None:
    """The LoRA tensors as diffusers' `save_lora_adapter` writes them (its LoRA config in the metadata,
    so `load_lora_adapter` rebuilds the adapter), without its `to(dtype=None)` call that logs a warning."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from peft.utils import get_peft_model_state_dict

    config = unet.peft_config[ADAPTER_NAME].to_dict()
    config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    tensors = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in tensors.items()}
    metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(config, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata)


def _swap_in(tmp: Path, folder: Path) -> None:
    """Replace `folder` by `tmp` with renames (an interrupted write leaves the old folder or the new one)."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def read_guidance_config(folder: str | Path) -> dict:
    """guidance.json of an adapter folder, checked for the fields loading needs."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a guidance adapter (no {CONFIG_FILE}); train one with "
                                "`python -m training distill --model MODEL --out FOLDER`")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown adapter format {meta.get('format')!r}, expected {FORMAT!r}")
    for name in ("embedding_dim", "scale_range", "rank"):
        if name not in meta:
            raise ValueError(f"{path}: missing field {name!r}")
    for name in (LORA_FILE, PROJECTION_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: missing {name}")
    return meta


def load_projection_weight(folder: str | Path) -> torch.Tensor:
    return load_file(str(Path(folder) / PROJECTION_FILE))["weight"]


def attach_guidance_adapter(unet, folder: str | Path) -> dict:
    """Load an adapter folder into `unet` as a live peft adapter named "guidance" (+ the projection).

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
    if meta.get("base_unet_fingerprint") not in (None, unet_fingerprint(unet)):
        warnings.warn(f"the guidance adapter in {folder} was trained on another UNet checkpoint; distilled "
                      "results may be off: retrain it with `python -m training distill`", stacklevel=3)
    return meta


# --------------------------------------------------------------------------------------------- inference
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
    """Put the original layers back in place of peft's wrappers (their weights were never changed)."""
    if getattr(unet, "_hf_peft_config_loaded", False):
        unet.unload_lora()
    if hasattr(unet, "peft_config"):
        unet.peft_config.pop(ADAPTER_NAME, None)
        if not unet.peft_config:
            del unet.peft_config
            unet._hf_peft_config_loaded = False


def find_adapter_folder(model_folder: str | Path) -> Path | None:
    """`<model folder>/guidance` when it holds an adapter (the shipped model keeps its adapter there)."""
    candidate = Path(model_folder) / "guidance"
    return candidate if (candidate / CONFIG_FILE).is_file() else None
