"""Diffusion: the layered pipeline, mask processing, BCG, model families. Knows nothing of layers, undo or UI."""

from .loading import EMBEDDED_MODEL_DIR, load_pipeline
from .masks import MaskError
from .compositing import composite, recomposite
from .families import UnsupportedModelError
from .text_conditioning import TextConditioning
from .pipeline_layered import EditRegion, LayeredPipeline, LayeredPipelineOutput
from .schedulers import SCHEDULERS

__all__ = [
    "EMBEDDED_MODEL_DIR",
    "EditRegion",
    "LayeredPipeline",
    "LayeredPipelineOutput",
    "MaskError",
    "SCHEDULERS",
    "TextConditioning",
    "UnsupportedModelError",
    "composite",
    "recomposite",
    "load_pipeline",
]
