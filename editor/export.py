"""Layers that leave the app as layers: OpenRaster (.ora), Photoshop (.psd), or PNGs plus a manifest (.zip).

`Session.save` is the lossless route (trajectories, embeddings, everything a replay needs); an export is for
other tools. In the .ora and .psd files every layer is a full-canvas RGBA layer: the background opaque, each
edit holding only its own pixels with its soft mask as alpha, hidden layers hidden, names from the prompts,
and the prompts, seeds, settings and model identity inside the file as JSON (see `metadata`).

A record keeps the composite image its edit produced, not the decoded pixels:
``image = round(prev * (1 - w) + decoded * w)`` where the soft mask w > 0, else ``prev``
(pipelines/pipeline_layered.py `composite`), where ``prev`` is the image of the nearest visible layer below
(layers above a hidden one were replayed without it). `layer_pixels` recovers each layer's own colour from
that rule, solving against the alpha-over of the exported layers below in 8 bits, so that a painting
program's alpha-over of the visible exported layers gives back `session.image` within one level per
channel (rounding of the 8-bit alpha and of the app's own arithmetic).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from memory import LayerRecord, load_project, write_atomic

FORMAT = "layered-edit export"
FORMAT_VERSION = 1
METADATA_NAMESPACE = "urn:layered-edit:export:1"  # a name, not an address: XML namespaces only need to be unique
ORA_METADATA = "layered-edit.json"  # the ORA member holding `metadata`; the spec lets apps add their own files
ORA_SPEC_VERSION = "0.0.5"
THUMBNAIL_MAX = 256  # px, the OpenRaster spec's largest thumbnail side
MAX_NAME_CHARS = 100  # layer names longer than this are cut (PSD allows 255; long names help nobody in a panel)
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same session always gives the same .ora bytes


@dataclasses.dataclass(frozen=True)
class ExportLayer:
    """One layer as other tools see it: full-canvas RGBA (straight alpha), a display name and visibility."""

    name: str
    pixels: np.ndarray  # uint8 HxWx4
    visible: bool


def export_layers(path: str | os.PathLike[str], layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> Path:
    """Write `layers` (bottom first) to `path`; the format follows the extension: .ora, .psd or .zip.

    `meta` is the session's project meta ("model", "defaults"). The file is built in memory, then written
    to a temporary file beside `path` and renamed over it: a failed export leaves no partial file and keeps
    any earlier file at `path`.
    """
    path = _checked_target(path)
    if not layers:
        raise ValueError("nothing to export: the session has no layers yet")
    data = WRITERS[path.suffix.lower()](layers, meta)
    try:
        write_atomic(path, data)
    except OSError as error:
        message = f"could not export to {path}: {error.strerror or error}; no file was written"
        raise (OSError(error.errno, message) if error.errno else OSError(message)) from error
    return path


def export_project(project: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Export a saved project (folder or .lep) without loading its model: the layers hold all the pixels."""
    _checked_target(path)  # a wrong output name fails before the project is read
    layers, meta = load_project(project)
    return export_layers(path, layers, meta)


# ======================================================================================================================
# Layer pixels and metadata
# ======================================================================================================================


def layer_pixels(layers: Sequence[LayerRecord]) -> list[ExportLayer]:
    """Each layer's own pixels with its soft mask as 8-bit alpha, bottom first.

    `base` is what the exported visible layers below composite to, in 8 bits as painting programs compute it;
    a layer's colour is solved against it, so rounding below never accumulates upwards. A hidden layer is
    solved against the visible layers below it now (if they changed after it was hidden, only the blend at
    its soft edge is approximate: where its alpha is 1 its pixels are exact).
    """
    base = np.zeros(layers[0].image.shape, dtype=np.float64)
    exported = []
    for index, record in enumerate(layers):
        target = np.asarray(record.image, dtype=np.float64)
        alpha8 = np.floor(_composite_weight(record) * 255.0 + 0.5)  # half up: w >= 1/510 must stay visible
        alpha = (alpha8 / 255.0)[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            colour = np.where(alpha > 0, (target - base * (1.0 - alpha)) / alpha, 0.0)
        colour = np.clip(np.round(colour), 0, 255)
        if record.visible:
            base = np.round(base * (1.0 - alpha) + colour * alpha)
        pixels = np.dstack([colour, alpha8]).astype(np.uint8)
        exported.append(ExportLayer(name=layer_name(index, record), pixels=pixels, visible=record.visible))
    return exported


def _composite_weight(record: LayerRecord) -> np.ndarray:
    """The weight the layer's pixels had in its composite: its soft mask, or 1 everywhere when the edit kept
    the decoded picture whole (preserve="latents") or the layer is the background."""
    if record.kind == "background" or record.settings.get("preserve") == "latents":
        return np.ones(record.mask.shape, dtype=np.float64)
    return np.asarray(record.mask, dtype=np.float64)


def layer_name(index: int, record: LayerRecord) -> str:
    """A display name from the prompt: one line of printable text, at most MAX_NAME_CHARS characters."""
    name = clean_text(record.prompt)
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS - 1].rstrip() + "…"
    return name or ("background" if index == 0 else f"layer {index}")


def clean_text(text: str) -> str:
    """`text` on one line without control characters or lone surrogates (invalid in XML, unsafe in a layer
    panel); runs of whitespace become one space."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


def metadata(layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> dict[str, Any]:
    """What the exported file records about the session: model identity, default settings, and per layer the
    prompt, negative prompt, seed, settings, schedule, visibility and generation info (JSON-serialisable)."""
    height, width = layers[0].image.shape[:2]
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "model": meta.get("model"),
        "defaults": meta.get("defaults"), "size": [width, height],
        "layers": [{
            "index": index, "name": layer_name(index, record), "kind": record.kind, "prompt": record.prompt,
            "negative_prompt": record.negative_prompt, "seed": record.seed, "visible": record.visible,
            "settings": dict(record.settings),
            "schedule": {"scheduler": record.schedule[0], "timesteps": list(record.schedule[1])},
            "info": dict(record.info)} for index, record in enumerate(layers)],
    }


def _metadata_json(layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> str:
    # ASCII only: safe inside XML text whatever the prompts hold (lone surrogates included)
    return json.dumps(metadata(layers, meta), indent=1, ensure_ascii=True)


def _current_image(layers: Sequence[LayerRecord]) -> np.ndarray:
    """The session's picture: the image of the topmost visible layer (as Session.image)."""
    return np.asarray([record for record in layers if record.visible][-1].image)


# ======================================================================================================================
# OpenRaster
# ======================================================================================================================


def ora_bytes(layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> bytes:
    """An OpenRaster file: mimetype (first, stored), stack.xml, data/*.png, mergedimage.png, a thumbnail."""
    height, width = layers[0].image.shape[:2]
    merged = Image.fromarray(_current_image(layers))
    thumbnail = merged.copy()
    thumbnail.thumbnail((THUMBNAIL_MAX, THUMBNAIL_MAX), Image.Resampling.LANCZOS)
    exported = layer_pixels(layers)
    sources = [f"data/layer-{index:03d}.png" for index in range(len(layers))]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "mimetype", b"image/openraster", zipfile.ZIP_STORED)  # the spec: first and uncompressed
        _add(archive, "stack.xml", _stack_xml(layers, exported, sources, width, height), zipfile.ZIP_DEFLATED)
        for source, layer in zip(sources, exported):
            _add(archive, source, _png(Image.fromarray(layer.pixels, "RGBA")), zipfile.ZIP_STORED)
        _add(archive, "mergedimage.png", _png(merged), zipfile.ZIP_STORED)
        _add(archive, "Thumbnails/thumbnail.png", _png(thumbnail), zipfile.ZIP_STORED)
        _add(archive, ORA_METADATA, _metadata_json(layers, meta).encode("ascii"), zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _stack_xml(layers, exported: list[ExportLayer], sources: list[str], width: int, height: int) -> bytes:
    """stack.xml with the spec's attributes; the topmost layer comes first. Our own attributes (layer index,
    kind, seed, prompt) live in METADATA_NAMESPACE, as the spec asks of non-standard attributes."""
    ns = f"{{{METADATA_NAMESPACE}}}"
    image = ET.Element("image", {"version": ORA_SPEC_VERSION, "w": str(width), "h": str(height),
                                 f"{ns}metadata": ORA_METADATA})
    stack = ET.SubElement(image, "stack")
    for index in reversed(range(len(layers))):
        record, layer = layers[index], exported[index]
        ET.SubElement(stack, "layer", {
            "name": layer.name, "src": sources[index], "x": "0", "y": "0", "opacity": "1.0",
            "visibility": "visible" if layer.visible else "hidden", "composite-op": "svg:src-over",
            f"{ns}index": str(index), f"{ns}kind": record.kind, f"{ns}seed": str(record.seed),
            f"{ns}prompt": clean_text(record.prompt)})
    ET.register_namespace("layered-edit", METADATA_NAMESPACE)
    return ET.tostring(image, encoding="UTF-8", xml_declaration=True)


def _add(archive: zipfile.ZipFile, name: str, data: bytes, compression: int) -> None:
    info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
    info.compress_type = compression
    archive.writestr(info, data)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


# ======================================================================================================================
# Photoshop
# ======================================================================================================================


def psd_bytes(layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> bytes:
    """A layered 8-bit RGB PSD written by psd-tools: one pixel layer per layer (transparency channel = alpha),
    the metadata JSON in the document's XMP packet (image resource 1060, which Photoshop keeps)."""
    from psd_tools import PSDImage  # imported here: only a PSD export pays for it
    from psd_tools.constants import Resource
    from psd_tools.psd.image_resources import ImageResource

    height, width = layers[0].image.shape[:2]
    document = PSDImage.new("RGB", (width, height))
    for layer in layer_pixels(layers):  # psd-tools adds each new layer on top
        added = document.create_pixel_layer_from_array(layer.pixels)
        added.name = layer.name  # the setter also writes the Unicode name block that Photoshop and Krita read
        added.visible = layer.visible
    document.image_resources[Resource.XMP_METADATA] = ImageResource(
        key=Resource.XMP_METADATA, data=_xmp_packet(_metadata_json(layers, meta)))
    out = io.BytesIO()
    document.save(out)  # also renders the merged preview that readers without layer support show
    return out.getvalue()


def _xmp_packet(text: str) -> bytes:
    """An XMP packet whose one property, layered-edit:metadata, holds `text`."""
    rdf = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
    ET.register_namespace("x", "adobe:ns:meta/")
    ET.register_namespace("rdf", rdf)
    ET.register_namespace("layered-edit", METADATA_NAMESPACE)
    root = ET.Element("{adobe:ns:meta/}xmpmeta")
    description = ET.SubElement(ET.SubElement(root, f"{{{rdf}}}RDF"), f"{{{rdf}}}Description", {f"{{{rdf}}}about": ""})
    ET.SubElement(description, f"{{{METADATA_NAMESPACE}}}metadata").text = text
    body = ET.tostring(root, encoding="unicode")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>' + body + '<?xpacket end="w"?>').encode()


# ======================================================================================================================
# PNGs + manifest (the first export format, kept as it was)
# ======================================================================================================================


def zip_bytes(layers: Sequence[LayerRecord], meta: Mapping[str, Any]) -> bytes:
    """The current picture, then per layer the picture after it, that picture with the soft mask as alpha,
    and the painted mask, as PNGs; manifest.json describes them."""
    height, width = layers[0].image.shape[:2]
    manifest = {"format": "layered-edit layers", "version": 1, "model": meta.get("model"),
                "size": [width, height], "image": "image.png", "layers": []}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("image.png", _png(Image.fromarray(_current_image(layers))))
        for index, layer in enumerate(layers):
            stem = f"layers/{index:02d}"
            image = np.asarray(layer.image)
            alpha = np.clip(np.asarray(layer.mask) * 255 + 0.5, 0, 255).astype(np.uint8)
            archive.writestr(f"{stem}_image.png", _png(Image.fromarray(image)))
            archive.writestr(f"{stem}_layer.png", _png(Image.fromarray(np.dstack([image, alpha]), "RGBA")))
            archive.writestr(f"{stem}_mask.png", _png(Image.fromarray(np.asarray(layer.user_mask))))
            manifest["layers"].append({
                "index": index, "kind": layer.kind, "prompt": layer.prompt,
                "negative_prompt": layer.negative_prompt, "seed": layer.seed, "visible": layer.visible,
                "settings": dict(layer.settings), "info": dict(layer.info),
                "image": f"{stem}_image.png", "layer": f"{stem}_layer.png", "mask": f"{stem}_mask.png"})
        manifest["files"] = {
            "image.png": "the current picture (top visible layer)",
            "NN_image.png": "the picture after layer NN",
            "NN_layer.png": "layer NN's pixels with its soft mask as alpha (RGBA)",
            "NN_mask.png": "the mask painted for layer NN (white = edited)"}
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    return buffer.getvalue()


WRITERS: dict[str, Callable[[Sequence[LayerRecord], Mapping[str, Any]], bytes]] = {
    ".ora": ora_bytes, ".psd": psd_bytes, ".zip": zip_bytes}
EXPORT_FORMATS = tuple(WRITERS)


def _checked_target(path: str | os.PathLike[str]) -> Path:
    """The export path, or a clear error before any work: known extension, an existing folder, not a folder."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"export path must be a str or path, got {path!r}")
    path = Path(path)
    if path.suffix.lower() not in WRITERS:
        raise ValueError(f"cannot export to {path.name!r}: the name must end in one of {', '.join(WRITERS)} "
                         "(.ora for Krita and GIMP, .psd for Photoshop, .zip for PNGs plus a manifest)")
    if path.is_dir():
        raise IsADirectoryError(f"cannot export to {path}: it is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot export to {path}: the folder {folder} does not exist")
    return path
