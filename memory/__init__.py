"""Layer-wise memory of an edit session: immutable layer records, the undoable layer stack, and project files.

Pure data and persistence: this package knows tensors and arrays, never models or pipelines. Its file helpers
(atomic writes with fsync, PNG bytes, JSON copies; memory/files.py) are for every package of the project.
"""

from memory.files import atomic_directory, atomic_file, json_copy, png_bytes, write_atomic
from memory.loader import load_project
from memory.members import ProjectError
from memory.record import LayerRecord
from memory.stack import LayerMemory, MemoryStateError
from memory.store import FORMAT_VERSION, save_project

__all__ = [
    "FORMAT_VERSION",
    "LayerMemory",
    "LayerRecord",
    "MemoryStateError",
    "ProjectError",
    "atomic_directory",
    "atomic_file",
    "json_copy",
    "load_project",
    "png_bytes",
    "save_project",
    "write_atomic",
]
