"""The session API: the one place that knows both the layer memory and the diffusion pipeline."""

from .session import Session
from .settings import EditSettings

__all__ = ["EditSettings", "Session"]
