"""The session API: the one place that knows both the layer memory and the diffusion pipeline."""

from .session import NothingDrawnWarning, Session
from .settings import EditSettings

__all__ = ["EditSettings", "NothingDrawnWarning", "Session"]
