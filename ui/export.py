"""Export a session's layers as a zip of PNGs plus a manifest (the "Export layers" button)."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from memory import png_bytes, write_atomic

FILES = {
    "image.png": "the current picture (top visible layer)",
    "NN_image.png": "the picture after layer NN",
    "NN_layer.png": "layer NN's pixels with its soft mask as alpha (RGBA)",
    "NN_mask.png": "the mask painted for layer NN (white = edited)"}


def export_zip(session, path: Path) -> Path:
    """Write the layers of `session` (an editor.Session) as PNGs plus a manifest.json into the zip file `path`."""
    manifest = {"format": "layered-edit layers", "version": 1, "model": session.model,
                "size": list(session.size), "image": "image.png", "layers": []}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.png", png_bytes(session.image))
        for index, layer in enumerate(session.layers):
            stem = f"layers/{index:02d}"
            image = np.asarray(layer.image)
            alpha = np.clip(np.asarray(layer.mask) * 255 + 0.5, 0, 255).astype(np.uint8)
            archive.writestr(f"{stem}_image.png", png_bytes(Image.fromarray(image)))
            archive.writestr(f"{stem}_layer.png", png_bytes(Image.fromarray(np.dstack([image, alpha]), "RGBA")))
            archive.writestr(f"{stem}_mask.png", png_bytes(Image.fromarray(np.asarray(layer.user_mask))))
            manifest["layers"].append({
                "index": index, "kind": layer.kind, "prompt": layer.prompt,
                "negative_prompt": layer.negative_prompt, "seed": layer.seed, "visible": layer.visible,
                "settings": dict(layer.settings), "info": dict(layer.info),
                "image": f"{stem}_image.png", "layer": f"{stem}_layer.png", "mask": f"{stem}_mask.png"})
        manifest["files"] = dict(FILES)
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    write_atomic(path, buffer.getvalue())
    return path

