"""Export as layers: OpenRaster and PSD files that painting programs open as a stack of layers.

Each file is read back with a reader that is not ours (zipfile + ElementTree for OpenRaster, psd-tools for
PSD, PIL's alpha compositing, and Krita itself when it is installed): the layers, their order, visibility and
names, the metadata, and that compositing the visible layers gives back session.image within one level.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psd_tools import PSDImage
from psd_tools.constants import Resource
from tiny_models import tiny_pipeline

from editor import EditSettings, Session
from editor.export import (MAX_NAME_CHARS, METADATA_NAMESPACE, ORA_METADATA, export_layers, layer_name,
                           layer_pixels)
from memory import MemoryStateError
from ui.cli import main as cli_main

STEPS = 3
NS = f"{{{METADATA_NAMESPACE}}}"
# Overlapping boxes with wide feathered edges, so layers blend over partly transparent layers below.
EDITS = [("a red star", (2, 2, 20, 20)), ("a blue circle", (10, 8, 30, 28)), ("a yellow heart", (6, 14, 26, 31))]
OPENRASTER_VISIBILITY = {"visible", "hidden"}


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def four_layer_session(pipeline, hidden: int | None = None) -> Session:
    """Background + three overlapping edits; layer `hidden` is hidden (the layers above are replayed)."""
    session = Session(pipeline, model="tiny-test-model",
                      defaults=EditSettings(num_inference_steps=STEPS, mask_feather=4))
    session.generate("a grass background", seed=3)
    for prompt, box in EDITS:
        session.edit(prompt, box)
    if hidden is not None:
        session.set_visible(hidden, False)
    return session


@pytest.fixture(scope="module")
def session(pipeline):
    return four_layer_session(pipeline, hidden=2)


def alpha_over(layers: list[np.ndarray]) -> np.ndarray:
    """PIL's alpha compositing of RGBA uint8 layers, bottom first: an implementation that is not ours."""
    out = Image.fromarray(layers[0], "RGBA")
    for pixels in layers[1:]:
        out = Image.alpha_composite(out, Image.fromarray(pixels, "RGBA"))
    result = np.asarray(out)
    assert (result[..., 3] == 255).all(), "the background is opaque, so the composite must be"
    return result[..., :3]


def assert_within_one_level(actual: np.ndarray, expected) -> None:
    difference = np.abs(actual.astype(int) - np.asarray(expected).astype(int))
    assert difference.max() <= 1, f"{(difference > 1).sum()} channel values differ by up to {difference.max()}"


def soft_edge_pixels(session: Session) -> int:
    """Pixels of edit layers with a partial alpha: where recovering a layer's own colour is not trivial."""
    return sum(int(((layer.mask > 0) & (layer.mask < 1)).sum()) for layer in session.layers[1:])


# ---------------------------------------------------------------------------------------------- layer pixels
def test_the_scenario_blends_feathered_layers_over_each_other(session):
    assert soft_edge_pixels(session) > 200
    star, circle = session.layers[1].mask, session.layers[2].mask
    assert ((star > 0) & (star < 1) & (circle > 0)).any(), "the edits' soft edges must overlap"


@pytest.mark.parametrize("scenario", ["all visible", "one hidden", "top hidden", "latents edit", "stale hidden"])
def test_alpha_over_of_the_visible_layers_gives_back_the_session_image(pipeline, scenario):
    session = four_layer_session(pipeline, hidden={"one hidden": 2, "top hidden": 3}.get(scenario))
    if scenario == "latents edit":  # the whole decoded picture is kept: a fully opaque layer
        session.edit("a white moon", (0, 0, 32, 12), preserve="latents")
    if scenario == "stale hidden":  # layer 2 hidden, then layer 1 re-edited below it: its record is stale
        session.set_visible(2, False)
        session.replace(1, prompt="a green tree")
    exported = layer_pixels(session.layers)
    assert_within_one_level(alpha_over([layer.pixels for layer in exported if layer.visible]), session.image)
    if scenario == "latents edit":
        assert (exported[-1].pixels[..., 3] == 255).all()
        assert np.array_equal(exported[-1].pixels[..., :3], session.layers[-1].image)


def test_each_edit_layer_holds_only_its_own_pixels_with_its_soft_mask_as_alpha(session):
    exported = layer_pixels(session.layers)
    assert (exported[0].pixels[..., 3] == 255).all()
    assert np.array_equal(exported[0].pixels[..., :3], session.layers[0].image)
    for layer, record in zip(exported[1:], session.layers[1:]):
        alpha = layer.pixels[..., 3].astype(int)
        assert np.abs(alpha - record.mask * 255).max() <= 0.5
        assert (layer.pixels[alpha == 0] == 0).all(), "outside its mask a layer is fully transparent"
        inside = record.mask == 1
        assert np.array_equal(layer.pixels[..., :3][inside], record.image[inside]), "opaque where the mask is 1"


# ---------------------------------------------------------------------------------------------- OpenRaster
def read_ora(path: Path):
    """Open an .ora as the spec describes it; returns (stack.xml root, {member: bytes})."""
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert not first.extra, "mimetype must be readable at a fixed offset"
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    assert members["mimetype"] == b"image/openraster"
    return ET.fromstring(members["stack.xml"]), members


def png(data: bytes, mode: str) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return np.asarray(image.convert(mode))


def test_openraster_export_reads_back_as_the_layer_stack(session, tmp_path):
    path = session.export(tmp_path / "scene.ora")
    root, members = read_ora(path)
    width, height = session.size
    # stack.xml: the spec's required attributes and one root stack, topmost layer first
    assert root.tag == "image" and root.get("version") and (root.get("w"), root.get("h")) == (str(width), str(height))
    stacks = root.findall("stack")
    assert len(stacks) == 1
    entries = stacks[0].findall("layer")
    assert len(entries) == len(session.layers) == 4
    assert [int(entry.get(f"{NS}index")) for entry in entries] == [3, 2, 1, 0]
    for entry, record in zip(entries, reversed(session.layers)):
        assert entry.get("src") in members and entry.get("src").endswith(".png")
        assert int(entry.get("x", "0")) == 0 and int(entry.get("y", "0")) == 0
        assert 0.0 <= float(entry.get("opacity", "1")) <= 1.0
        assert entry.get("visibility", "visible") in OPENRASTER_VISIBILITY
        assert entry.get("composite-op", "svg:src-over") == "svg:src-over"
        assert (entry.get("visibility") == "visible") == record.visible
        assert entry.get("name") == record.prompt
        assert entry.get(f"{NS}seed") == str(record.seed)
    assert [entry.get("visibility") for entry in entries] == ["visible", "hidden", "visible", "visible"]
    # pixels: the data PNGs composite back to the picture; mergedimage is the picture; a small thumbnail
    layers = {entry.get("src"): png(members[entry.get("src")], "RGBA") for entry in entries}
    assert all(pixels.shape == (height, width, 4) for pixels in layers.values())
    visible = [layers[entry.get("src")] for entry in reversed(entries) if entry.get("visibility") == "visible"]
    assert_within_one_level(alpha_over(visible), session.image)
    assert np.array_equal(png(members["mergedimage.png"], "RGB"), np.asarray(session.image))
    assert max(Image.open(io.BytesIO(members["Thumbnails/thumbnail.png"])).size) <= 256
    # metadata: prompts, seeds, settings and model identity travel inside the file
    assert root.get(f"{NS}metadata") == ORA_METADATA
    meta = json.loads(members[ORA_METADATA])
    assert meta["model"] == "tiny-test-model" and meta["size"] == [width, height]
    assert [layer["prompt"] for layer in meta["layers"]] == [record.prompt for record in session.layers]
    assert [layer["seed"] for layer in meta["layers"]] == [record.seed for record in session.layers]
    assert [layer["visible"] for layer in meta["layers"]] == [True, True, False, True]
    assert meta["layers"][1]["settings"] == dict(session.layers[1].settings)
    assert meta["layers"][1]["schedule"]["timesteps"] == list(session.layers[1].schedule[1])


# ---------------------------------------------------------------------------------------------- PSD
def test_psd_export_reads_back_as_the_layer_stack(session, tmp_path):
    path = session.export(tmp_path / "scene.psd")
    document = PSDImage.open(path)
    assert document.size == session.size and document.depth == 8
    layers = list(document)  # psd-tools lists layers bottom first
    assert [layer.kind for layer in layers] == ["pixel"] * 4
    assert [layer.name for layer in layers] == [record.prompt for record in session.layers]
    assert [layer.visible for layer in layers] == [True, True, False, True]
    expected = layer_pixels(session.layers)
    for layer, wanted in zip(layers, expected):
        assert layer.bbox == (0, 0, *session.size)
        pixels = np.round(layer.numpy() * 255).astype(np.uint8)
        assert np.array_equal(pixels, wanted.pixels)
    assert_within_one_level(alpha_over([layer.pixels for layer in expected if layer.visible]), session.image)
    assert_within_one_level(np.asarray(document.composite().convert("RGB")), session.image)  # psd-tools' own
    assert_within_one_level(np.asarray(document.topil().convert("RGB")), session.image)  # the stored preview
    meta = read_xmp_metadata(document)
    assert meta["model"] == "tiny-test-model"
    assert [layer["prompt"] for layer in meta["layers"]] == [record.prompt for record in session.layers]
    assert meta["layers"][2]["settings"]["mask_feather"] == 4


def read_xmp_metadata(document) -> dict:
    packet = bytes(document.image_resources.get_data(Resource.XMP_METADATA)).decode("utf-8")
    body = packet[packet.index("<x:xmpmeta"):packet.rindex("</x:xmpmeta>") + len("</x:xmpmeta>")]
    return json.loads(ET.fromstring(body).find(f".//{NS}metadata").text)


# ---------------------------------------------------------------------------------------------- zip (as before)
def test_zip_export_keeps_its_format(session, tmp_path):
    path = session.export(tmp_path / "layers.zip")
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert np.array_equal(png(archive.read("image.png"), "RGB"), np.asarray(session.image))
        assert len(manifest["layers"]) == 4 and manifest["model"] == "tiny-test-model"
        for entry, record in zip(manifest["layers"], session.layers):
            assert (entry["prompt"], entry["visible"]) == (record.prompt, record.visible)
            assert np.array_equal(png(archive.read(entry["image"]), "RGB"), record.image)
            assert png(archive.read(entry["layer"]), "RGBA").shape[2] == 4
            assert np.array_equal(png(archive.read(entry["mask"]), "L"), record.user_mask)


# ---------------------------------------------------------------------------------------------- names
HOSTILE_PROMPTS = ['a <red> & "blue" star', "two\nlines\tand a bell\x07", "a lone \udc80 surrogate",
                   "日本の猫 🐱", "x" * 300, "", "../../etc/passwd"]


@pytest.mark.parametrize("suffix", [".ora", ".psd"])
def test_names_from_any_prompt_are_escaped_safely(session, tmp_path, suffix):
    layers = [session.layers[0]] + [record.replace(prompt=prompt) for prompt in HOSTILE_PROMPTS
                                    for record in session.layers[1:2]]
    path = export_layers(tmp_path / f"names{suffix}", layers, {"model": "m"})
    if suffix == ".ora":
        root, members = read_ora(path)
        names = [entry.get("name") for entry in reversed(root.find("stack").findall("layer"))]
        assert sorted(members) == sorted({"mimetype", "stack.xml", "mergedimage.png", "Thumbnails/thumbnail.png",
                                          ORA_METADATA} | {f"data/layer-{i:03d}.png" for i in range(len(layers))})
        prompts = [layer["prompt"] for layer in json.loads(members[ORA_METADATA])["layers"]]
    else:
        document = PSDImage.open(path)
        names = [layer.name for layer in document]
        prompts = [layer["prompt"] for layer in read_xmp_metadata(document)["layers"]]
    assert names[1] == 'a <red> & "blue" star'
    assert names[2] == "two lines and a bell"
    assert names[3] == "a lone surrogate"
    assert names[4] == "日本の猫 🐱"
    assert len(names[5]) == MAX_NAME_CHARS and names[5].endswith("…")
    assert names[6] == "layer 6"
    assert names[7] == "../../etc/passwd"  # only a name: the layer's file in the archive is data/layer-007.png
    assert names == [layer_name(index, record) for index, record in enumerate(layers)]
    assert prompts == [record.prompt for record in layers], "the metadata keeps each prompt exactly"


# ---------------------------------------------------------------------------------------------- errors
def only_file(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_an_unknown_extension_is_refused_before_anything_is_written(session, tmp_path):
    with pytest.raises(ValueError, match=r"\.ora, \.psd, \.zip"):
        session.export(tmp_path / "scene.png")
    with pytest.raises(ValueError, match="must end in"):
        session.export(tmp_path / "scene")
    assert only_file(tmp_path) == []


def test_bad_paths_are_clear_errors(session, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        session.export(tmp_path / "missing" / "scene.ora")
    (tmp_path / "folder.psd").mkdir()
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        session.export(tmp_path / "folder.psd")
    with pytest.raises(TypeError):
        session.export(None)
    assert only_file(tmp_path) == ["folder.psd"]


def can_create_files_in(folder: Path) -> bool:
    probe = folder / ".layered-edit-probe"
    try:
        probe.open("xb").close()
    except OSError:
        return False
    probe.unlink()
    return True


def test_an_unwritable_folder_is_a_clear_error_and_leaves_no_file(session, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if can_create_files_in(folder):  # root ignores folder permissions; sysfs refuses new files even to root
            folder = Path("/sys")
            if not folder.is_dir() or can_create_files_in(folder):
                pytest.skip("no folder here that this user cannot write to")
        with pytest.raises(OSError, match="could not export to .*no file was written"):
            session.export(folder / "layered-edit-export-test.ora")
        assert not (folder / "layered-edit-export-test.ora").exists()
        assert not any(path.name.startswith(".layered-edit-export-test") for path in folder.iterdir())
    finally:
        (tmp_path / "read-only").chmod(0o755)


@pytest.mark.parametrize("suffix", [".ora", ".psd", ".zip"])
def test_a_full_disk_leaves_the_previous_file_and_no_partial_one(session, tmp_path, monkeypatch, suffix):
    target = tmp_path / f"scene{suffix}"
    target.write_bytes(b"the previous export")

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)  # the atomic writer syncs before it renames
    with pytest.raises(OSError, match="No space left on device") as raised:
        session.export(target)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"the previous export"
    assert only_file(tmp_path) == [target.name], "the temporary file is removed"


def test_exporting_before_a_background_is_a_clear_error(pipeline, tmp_path):
    with pytest.raises(MemoryStateError, match="no background"):
        Session(pipeline).export(tmp_path / "empty.ora")


# ---------------------------------------------------------------------------------------------- command line
def test_the_export_command_writes_each_format_from_a_saved_project(session, tmp_path, capsys):
    project = session.save(tmp_path / "scene.lep")
    for suffix in (".ora", ".psd", ".zip"):
        assert cli_main(["export", str(project), str(tmp_path / f"out{suffix}")]) == 0
    assert [layer.name for layer in PSDImage.open(tmp_path / "out.psd")] == [r.prompt for r in session.layers]
    root, _ = read_ora(tmp_path / "out.ora")
    assert len(root.find("stack").findall("layer")) == 4
    assert cli_main(["export", str(project), str(tmp_path / "out.gif")]) == 2
    assert "must end in one of .ora, .psd, .zip" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path / "nothing.lep"), str(tmp_path / "x.ora")]) == 2


# ---------------------------------------------------------------------------------------------- a real painting app
KRITA = shutil.which("krita")
XVFB = shutil.which("Xvfb")


@pytest.fixture(scope="module")
def x_display():
    """An X display for Krita 5, which always uses Qt's xcb platform: the one we have, or our own Xvfb.

    Xvfb writes its display number to `-displayfd` only once it accepts clients, so there is no race on
    lock files or start-up time (xvfb-run -a lost that race on CI once: "could not connect to display :99").
    """
    if os.environ.get("DISPLAY"):
        yield os.environ["DISPLAY"]
        return
    read_end, write_end = os.pipe()
    # -noreset: by default Xvfb resets when its last client leaves, and a client that connects during the reset
    # (the next Krita run, on a loaded machine) can be refused. Its log goes to a file: a pipe nobody reads can
    # fill with each client's keymap warnings, and then Xvfb blocks and accepts no one. (Either would explain one
    # fresh-clone run's "could not connect to display" for the second Krita run.)
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([XVFB, "-displayfd", str(write_end), "-screen", "0", "1280x1024x24", "-nolisten", "tcp",
                               "-noreset"], pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=log)
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reader:
            number = reader.readline().strip()
        if not number.isdigit():
            server.wait(timeout=30)
            log.seek(0)
            raise AssertionError(f"Xvfb did not start: {log.read().decode(errors='replace')[-2000:]}")
        yield f":{number}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.skipif(KRITA is None, reason="krita is not installed (Debian: apt-get install krita xvfb); CI installs it")
@pytest.mark.skipif(XVFB is None and not os.environ.get("DISPLAY"),
                    reason="Krita 5 always uses Qt's xcb platform, so it needs an X server: apt-get install xvfb")
@pytest.mark.parametrize("suffix", [".ora", ".psd"])
def test_krita_opens_the_export_as_layers_and_renders_the_session_image(session, tmp_path, suffix, x_display):
    exported = session.export(tmp_path / f"scene{suffix}")
    rendered = krita_export(exported, tmp_path / "rendered.png", x_display)
    pixels = np.asarray(Image.open(rendered).convert("RGBA"))
    assert (pixels[..., 3] == 255).all()
    assert_within_one_level(pixels[..., :3], session.image)
    # Krita's own OpenRaster of what it read: the same layers, names and visibility (so it read the layers,
    # not only the merged preview)
    root, _ = read_ora(krita_export(exported, tmp_path / "krita.ora", x_display))
    entries = list(reversed(root.find("stack").findall("layer")))
    assert [entry.get("name") for entry in entries] == [record.prompt for record in session.layers]
    assert [entry.get("visibility") for entry in entries] == ["visible", "visible", "hidden", "visible"]


def krita_export(source: Path, target: Path, display: str) -> Path:
    """Krita converts `source` to `target` headless (its config goes to a scratch HOME)."""
    home = target.parent / "krita-home"
    home.mkdir(exist_ok=True)
    command = [KRITA, "--export", "--export-filename", str(target), str(source)]
    env = {**os.environ, "DISPLAY": display, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
           "XDG_DATA_HOME": str(home / ".local/share"), "XDG_CACHE_HOME": str(home / ".cache")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and target.is_file(), f"krita failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    return target
