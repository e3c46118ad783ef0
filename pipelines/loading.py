"""Where models come from: the shipped embedded model, a local diffusers folder, or a hub id."""

from __future__ import annotations

from pathlib import Path

import torch

from .families import check_model_index
from .guidance import find_adapter_folder, load_guidance_adapter
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


def load_pipeline(path_or_id: str | None = None, device=None, dtype=None,
                  guidance_adapter: str | Path | bool | None = None) -> LayeredPipeline:
    """Load a diffusers checkpoint of a supported family (SD-1.x/2.x, SDXL, PixArt-α; or the embedded model)
    as a LayeredPipeline. A local folder's model_index.json is checked first, so an unsupported model is
    refused before any weight is read.

    Only safetensors weights are read (a pickled .bin checkpoint is refused: loading must never run
    code); on CUDA the default dtype is float16, on the CPU float32. `guidance_adapter`: a folder
    made by `python -m training distill`; None loads `<model folder>/guidance` when there is one
    (the embedded model ships its adapter there); False loads none. A fast adapter (guidance="fast") in
    `<model folder>/fast` is loaded with the model unless `guidance_adapter` is False.
    """
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    source = resolve_model(path_or_id)
    if Path(source).is_dir():
        check_model_index(source)
    pipeline = LayeredPipeline.from_pretrained(source, dtype=dtype, use_safetensors=True)
    if dtype != torch.float32:
        pipeline.vae.to(dtype=torch.float32)  # fp16 SD/SDXL VAEs overflow; the VAE is a small share of the time
    pipeline.to(device)
    if guidance_adapter is None or guidance_adapter is True:
        found = find_adapter_folder(source) if Path(source).is_dir() else None
        if found is None and guidance_adapter is True:
            raise FileNotFoundError(f"{source} has no guidance adapter in a 'guidance' folder; pass its folder")
        guidance_adapter = found
    if guidance_adapter:
        load_guidance_adapter(pipeline, guidance_adapter)
    fast = find_adapter_folder(source, "fast") if Path(source).is_dir() and guidance_adapter is not False else None
    if fast is not None:
        load_guidance_adapter(pipeline, fast, "fast")
    return pipeline
