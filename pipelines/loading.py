"""Where models come from: the shipped embedded model, a local diffusers folder, or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from .pipeline_layered import LayeredPipeline

EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "embedded"
EMBEDDED = "embedded"


def resolve_model(path_or_id: str | None) -> str:
    """None or "embedded" -> the shipped model's folder; anything else is passed to diffusers as is."""
    if path_or_id in (None, EMBEDDED):
        if not (EMBEDDED_MODEL_DIR / "model_index.json").is_file():
            raise FileNotFoundError(
                f"the embedded model is missing from {EMBEDDED_MODEL_DIR}; reinstall layered-edit "
                "or pass a Stable Diffusion folder or hub id")
        return str(EMBEDDED_MODEL_DIR)
    return str(path_or_id)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(path_or_id: str | None = None, device=None, dtype=None) -> LayeredPipeline:
    """Load any SD-1.x/2.x diffusers checkpoint (or the embedded model) as a LayeredPipeline.

    Only safetensors weights are read (a pickled .bin checkpoint is refused: loading must never run
    code); on CUDA the default dtype is float16, on the CPU float32.
    """
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    source = resolve_model(path_or_id)
    pipeline = LayeredPipeline.from_pretrained(source, dtype=dtype, use_safetensors=True)
    pipeline.vae.to(dtype=torch.float32)  # fp16 SD VAEs overflow; the VAE is a small share of the time
    pipeline.to(device)
    return pipeline
