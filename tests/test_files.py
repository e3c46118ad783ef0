"""memory/files.py: the one atomic writer (with fsync), the one PNG encoder and the one JSON copy of the project."""

from __future__ import annotations

import io
import math
import os

import numpy as np
import pytest
from PIL import Image

from memory import atomic_directory, atomic_file, json_copy, png_bytes, write_atomic


def test_an_atomic_write_is_synced_before_it_replaces_the_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda descriptor: synced.append(target.read_bytes()) or real_fsync(descriptor))
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["state.json"]
    assert synced[0] == b"old"  # the temp file was synced while the target still held the old bytes


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "project.lep"
    target.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), atomic_file(target) as file:
        file.write(b"half of the new")
        raise OSError("disk full (simulated)")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["project.lep"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "file", b"x")  # parents are made only when asked
    write_atomic(tmp_path / "made" / "file", b"x", parents=True)
    assert (tmp_path / "made" / "file").read_bytes() == b"x"


def test_an_atomic_directory_replaces_the_folder_whole_or_not_at_all(tmp_path):
    folder = tmp_path / "unet"
    with atomic_directory(folder) as staging:
        (staging / "config.json").write_text("first")
    with pytest.raises(RuntimeError, match="killed"), atomic_directory(folder) as staging:
        (staging / "config.json").write_text("second")
        raise RuntimeError("killed half way")
    assert (folder / "config.json").read_text() == "first" and os.listdir(tmp_path) == ["unet"]
    with atomic_directory(folder) as staging:
        (staging / "weights").mkdir()
        (staging / "weights" / "a.safetensors").write_bytes(b"w")
    assert sorted(os.listdir(folder)) == ["weights"] and os.listdir(tmp_path) == ["unet"]  # no backup left


def test_png_bytes_are_lossless_and_the_same_for_an_array_and_its_image():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    encoded = png_bytes(pixels[:, ::-1])  # a non-contiguous view encodes like its copy
    assert encoded == png_bytes(Image.fromarray(np.ascontiguousarray(pixels[:, ::-1])))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded))), pixels[:, ::-1])
    mask = np.zeros((4, 4), dtype=np.uint8)
    assert Image.open(io.BytesIO(png_bytes(mask))).mode == "L"


def test_json_copy_gives_the_round_trip_form_and_refuses_what_json_cannot_hold():
    original = {"box": (1, 2), "nested": {"k": [1.5]}}
    copied = json_copy("settings", original)
    assert copied == {"box": [1, 2], "nested": {"k": [1.5]}}
    copied["nested"]["k"].append(2)
    assert original["nested"]["k"] == [1.5]
    with pytest.raises(ValueError, match="settings must be JSON-serialisable"):
        json_copy("settings", {"ratio": math.nan})
    with pytest.raises(ValueError, match="info must be a mapping"):
        json_copy("info", [1, 2])
