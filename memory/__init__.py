"""Layer-wise memory of an edit session: immutable layer records, the undoable layer stack, and project files.

Pure data and persistence: this package knows tensors and arrays, never models or pipelines.
"""

from memory.record import LayerRecord
from memory.stack import LayerMemory, MemoryStateError
from memory.store import FORMAT_VERSION, ProjectError, load_project, save_project

__all__ = [
    "FORMAT_VERSION",
    "LayerMemory",
    "LayerRecord",
    "MemoryStateError",
    "ProjectError",
    "load_project",
    "save_project",
]
