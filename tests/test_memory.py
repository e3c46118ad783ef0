"""Promises of memory/: immutable layer records, an undoable layer stack, and safe, exact project files."""

from __future__ import annotations

import builtins
import copy
import dataclasses
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import memory.members
from memory import (
    FORMAT_VERSION,
    LayerMemory,
    LayerRecord,
    MemoryStateError,
    ProjectError,
    load_project,
    save_project,
)

SIZE = 32
STEPS = 4


def make_record(kind: str = "edit", variant: int = 0, **changes) -> LayerRecord:
    """A small synthetic layer: fp16 latents [1, 4, 8, 8], a 32x32 image, a box mask for edits.

    `variant` seeds the random contents (and is the record's seed), so different variants differ everywhere.
    """
    generator = torch.Generator().manual_seed(variant)
    rng = np.random.default_rng(variant)
    user_mask = np.full((SIZE, SIZE), 255, np.uint8)
    if kind == "edit":
        user_mask[:] = 0
        user_mask[8:20, 10:24] = 255
    fields = dict(
        prompt=f"a red circle {variant}",
        negative_prompt="blurry",
        seed=variant,
        settings={"num_inference_steps": STEPS, "guidance_scale": 7.5, "scheduler": "ddim", "preserve": "pixels"},
        schedule=("DDIMScheduler", (750, 500, 250, 0)),
        prompt_embeds=torch.randn(1, 6, 16, generator=generator).half(),
        negative_prompt_embeds=torch.randn(1, 6, 16, generator=generator).half(),
        user_mask=user_mask,
        mask=(user_mask / 255.0).astype(np.float32),
        trajectory=tuple(torch.randn(1, 4, 8, 8, generator=generator).half() for _ in range(STEPS)),
        image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        kind=kind,
        info={"bcg": "memory", "unet_evals": 2 * STEPS},
    )
    fields.update(changes)
    return LayerRecord(**fields)


def make_stack(edits: int = 2) -> tuple[LayerRecord, ...]:
    return (make_record("background", variant=100),) + tuple(make_record("edit", variant=i) for i in range(edits))


def assert_same_content(a: LayerRecord, b: LayerRecord) -> None:
    """Bit-identical: same values and dtypes in every field."""
    for field in dataclasses.fields(LayerRecord):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if field.name == "trajectory":
            assert len(x) == len(y)
            for s, t in zip(x, y):
                assert s.dtype == t.dtype and torch.equal(s, t)
        elif field.name == "extra_tensors":
            assert x.keys() == y.keys()
            for key in x:
                assert x[key].dtype == y[key].dtype and torch.equal(x[key], y[key])
        elif isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y)
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y)
        else:
            assert x == y, field.name


# ======================================================================================================================
# LayerRecord
# ======================================================================================================================


def test_record_is_immutable_and_independent_of_the_callers_objects():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    settings_given = {"guidance_scale": 7.5}
    record = make_record(image=image, settings=settings_given)

    image[0, 0] = 255
    settings_given["guidance_scale"] = 1.0

    assert record.image[0, 0, 0] == 0 and image.flags.writeable
    assert record.settings["guidance_scale"] == 7.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.prompt = "changed"  # type: ignore[misc]
    with pytest.raises(ValueError):
        record.image[0, 0] = 1
    with pytest.raises(TypeError):
        record.settings["guidance_scale"] = 2.0  # type: ignore[index]


def test_record_keeps_tensors_as_given_without_changing_dtype():
    embeds = torch.randn(1, 6, 16).to(torch.bfloat16)
    record = make_record(prompt_embeds=embeds)
    assert record.prompt_embeds is embeds and record.prompt_embeds.dtype == torch.bfloat16
    assert all(latent.dtype == torch.float16 for latent in record.trajectory)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"mask": np.zeros((16, 16), np.float32)}, "mask must be HxW matching the image"),
        ({"user_mask": np.zeros((SIZE, 8), np.uint8)}, "user_mask must be HxW matching the image"),
        ({"schedule": ("DDIMScheduler", (999, 500, 0))}, "3 timesteps, got 4 latents"),
        ({"mask": np.full((SIZE, SIZE), np.nan, np.float32)}, "mask must be finite"),
        ({"mask": np.full((SIZE, SIZE), 1.5, np.float32)}, "mask must lie in [0, 1]"),
        ({"mask": np.zeros((SIZE, SIZE), np.float64)}, "mask must be float32"),
        ({"image": np.zeros((SIZE, SIZE), np.uint8)}, "image must be a uint8 HxWx3 array"),
        ({"image": np.zeros((SIZE, SIZE, 3), np.float32)}, "image must be a uint8 HxWx3 array"),
        ({"user_mask": np.ones((SIZE, SIZE), np.uint8)}, "only 0 and 255"),
        ({"trajectory": ()}, "at least one latent"),
        ({"trajectory": (torch.zeros(1, 4, 8, 8),) * 3 + (torch.zeros(1, 4, 8, 8).half(),)}, "share shape and dtype"),
        ({"kind": "overlay"}, "kind must be one of"),
        ({"settings": {"bad": float("nan")}}, "settings must be JSON-serialisable"),
        ({"info": {"tensor": torch.zeros(1)}}, "info must be JSON-serialisable"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"schedule": ("DDIMScheduler", (1.5, 2.5, 3.5, 4.5))}, "integer timesteps"),
    ],
)
def test_record_rejects_inconsistent_fields_with_a_clear_message(changes, message):
    with pytest.raises(ValueError) as error:
        make_record(**changes)
    assert message in str(error.value)


def test_background_must_cover_the_whole_image():
    with pytest.raises(ValueError, match="background layer's user_mask must be all 255"):
        make_record("background", user_mask=np.zeros((SIZE, SIZE), np.uint8))


def test_a_record_keeps_its_schedule_in_the_form_the_pipeline_compares():
    """BCG follows a stored trajectory only when (scheduler class, timesteps) equals the new edit's fingerprint
    (pipelines.schedulers.schedule_fingerprint: a str and a tuple of ints), so tensors and lists are normalised."""
    for timesteps in (torch.tensor([750, 500, 250, 0]), [750, 500, 250, 0], np.array([750, 500, 250, 0])):
        record = make_record(schedule=("DDIMScheduler", timesteps))
        assert record.schedule == ("DDIMScheduler", (750, 500, 250, 0))
        assert all(type(step) is int for step in record.schedule[1])
    with pytest.raises(ValueError, match="scheduler name"):
        make_record(schedule=("", (750, 500, 250, 0)))


def test_replace_makes_a_new_record_and_shares_unchanged_tensors():
    record = make_record()
    hidden = record.replace(visible=False)
    assert record.visible and not hidden.visible
    assert hidden.trajectory[0] is record.trajectory[0] and hidden.image is record.image


def test_nbytes_counts_every_tensor_and_array():
    record = make_record(extra_tensors={"noise": torch.zeros(1, 4, 8, 8, dtype=torch.float32)})
    expected = (
        2 * 6 * 16 * 2  # prompt and negative embeddings, fp16
        + STEPS * 4 * 8 * 8 * 2  # trajectory, fp16
        + 4 * 8 * 8 * 4  # extra float32 noise
        + SIZE * SIZE  # user mask, uint8
        + SIZE * SIZE * 4  # soft mask, float32
        + SIZE * SIZE * 3  # image, uint8
    )
    assert record.nbytes == expected


def test_deep_copy_of_an_immutable_record_is_the_record_itself():
    record = make_record()
    assert copy.deepcopy(record) is record
    assert copy.deepcopy([record])[0] is record


# ======================================================================================================================
# LayerMemory
# ======================================================================================================================


def memory_with(layers: tuple[LayerRecord, ...], **kwargs) -> LayerMemory:
    memory = LayerMemory(**kwargs)
    for record in layers:
        memory.push(record)
    return memory


def test_undo_then_redo_gives_back_the_identical_tuple():
    layers = make_stack(2)
    memory = memory_with(layers)
    before = memory.layers

    assert memory.undo() == "edit"
    assert memory.layers == layers[:2] and memory.top is layers[1]
    assert memory.redo() == "edit"

    assert memory.layers is before
    assert all(a is b for a, b in zip(memory.layers, layers))


def test_undo_of_a_replacing_commit_restores_the_exact_earlier_stack():
    layers = make_stack(3)
    memory = memory_with(layers)
    replayed = (layers[0], make_record(variant=50), make_record(variant=51), make_record(variant=52))
    memory.commit(replayed, "replace layer 1")

    assert memory.undo() == "replace layer 1"
    assert memory.layers == layers and all(a is b for a, b in zip(memory.layers, layers))


def test_undo_past_the_background_raises_and_changes_nothing():
    background = make_record("background")
    memory = memory_with((background,))
    with pytest.raises(MemoryStateError, match="background is the first layer"):
        memory.undo()
    assert memory.layers == (background,)
    assert not memory.can_undo and memory.undo_labels == []
    assert not memory.can_redo


def test_undo_and_redo_on_an_empty_memory_say_why():
    memory = LayerMemory()
    with pytest.raises(MemoryStateError, match="Nothing to undo: the layer stack is empty"):
        memory.undo()
    with pytest.raises(MemoryStateError, match="Nothing to redo"):
        memory.redo()
    assert memory.layers == () and memory.top is None


def test_a_new_commit_clears_redo():
    layers = make_stack(2)
    memory = memory_with(layers)
    memory.undo()
    assert memory.can_redo
    memory.push(make_record(variant=9))
    assert not memory.can_redo and memory.redo_labels == []
    with pytest.raises(MemoryStateError):
        memory.redo()


def test_history_limit_drops_the_oldest_steps():
    layers = make_stack(4)
    memory = memory_with(layers, history_limit=2)
    assert memory.undo_labels == ["edit", "edit"]
    memory.undo()
    memory.undo()
    assert memory.layers == layers[:3]
    with pytest.raises(MemoryStateError, match="no earlier state is kept"):
        memory.undo()
    assert memory.layers == layers[:3]


def test_commit_rejects_an_invalid_stack_and_changes_nothing():
    layers = make_stack(1)
    memory = memory_with(layers)
    small = make_record(
        image=np.zeros((16, 16, 3), np.uint8),
        user_mask=np.zeros((16, 16), np.uint8),
        mask=np.zeros((16, 16), np.float32),
    )
    invalid = {
        "empty": (),
        "edit first": (layers[1], layers[0]),
        "second background": (layers[0], make_record("background")),
        "other image size": (layers[0], small),
    }
    for label, stack in invalid.items():
        with pytest.raises(MemoryStateError):
            memory.commit(stack, label)
    assert memory.layers == layers and memory.undo_labels == ["edit"]


def test_labels_list_the_operations_undo_and_redo_would_apply_next_first():
    layers = make_stack(1)
    memory = memory_with(layers)
    memory.commit((layers[0], layers[1].replace(visible=False)), "hide layer 1")
    assert memory.undo_labels == ["hide layer 1", "edit"]
    memory.undo()
    assert memory.redo_labels == ["hide layer 1"] and memory.undo_labels == ["edit"]


def test_visible_layers_and_trajectory_views():
    layers = make_stack(2)
    memory = memory_with((layers[0], layers[1].replace(visible=False), layers[2]))
    assert [index for index, _ in memory.visible_layers()] == [0, 2]
    assert memory.trajectory_of(2) is layers[2].trajectory
    assert memory.trajectory_of(-1) is layers[2].trajectory
    with pytest.raises(IndexError):
        memory.trajectory_of(3)


def test_memory_nbytes_counts_records_and_tensors_shared_by_snapshots_once():
    layers = make_stack(2)
    memory = memory_with(layers)
    expected = sum(record.nbytes for record in layers)
    assert memory.nbytes == expected
    memory.commit((layers[0], layers[1].replace(visible=False), layers[2]), "hide layer 1")
    assert memory.nbytes == expected  # the hidden copy shares every tensor and array


def test_clear_history_forgets_undo_and_redo():
    memory = memory_with(make_stack(2))
    memory.undo()
    memory.clear_history()
    assert not memory.can_undo and not memory.can_redo


_POOL = make_stack(3)

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.integers(1, 4)),
        st.just(("undo",)),
        st.just(("redo",)),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(_operations)
def test_any_sequence_of_operations_behaves_like_a_linear_history(operations):
    """Reference model: a list of states and a cursor; undo stops at the first non-empty state."""
    memory, states, cursor = LayerMemory(), [()], 0
    for operation in operations:
        if operation[0] == "commit":
            new = _POOL[: operation[1]]
            memory.commit(new, f"{operation[1]} layers")
            states, cursor = states[: cursor + 1] + [new], cursor + 1
        elif operation[0] == "undo":
            if cursor > 0 and states[cursor - 1]:
                memory.undo()
                cursor -= 1
            else:
                with pytest.raises(MemoryStateError):
                    memory.undo()
        else:
            if cursor < len(states) - 1:
                memory.redo()
                cursor += 1
            else:
                with pytest.raises(MemoryStateError):
                    memory.redo()
        assert memory.layers == states[cursor]
        assert memory.can_redo == (cursor < len(states) - 1)


# ======================================================================================================================
# Project files
# ======================================================================================================================


def rich_stack() -> tuple[LayerRecord, ...]:
    """Layers exercising every field: mixed dtypes, no negative embeddings, hidden layer, extra tensors."""
    background, first, second = make_stack(2)
    first = first.replace(
        negative_prompt_embeds=None,
        visible=False,
        extra_tensors={"initial_noise": torch.randn(1, 4, 8, 8), "indices": torch.arange(5)},
    )
    second = second.replace(prompt_embeds=second.prompt_embeds.to(torch.bfloat16), settings={"nested": {"a": [1, 2]}})
    return background, first, second


@pytest.fixture(params=["directory", "archive"])
def project_path(request, tmp_path) -> Path:
    return tmp_path / ("project" if request.param == "directory" else "project.lep")


def test_save_then_load_is_bit_identical(project_path):
    layers = rich_stack()
    meta = {"model": "assets/shapes-world", "session_seed": 7}
    save_project(project_path, layers, meta)
    loaded, loaded_meta = load_project(project_path)

    assert loaded_meta == meta and len(loaded) == len(layers)
    for saved, restored in zip(layers, loaded):
        assert_same_content(saved, restored)
    assert loaded[1].extra_tensors["indices"].dtype == torch.int64
    assert loaded[2].prompt_embeds.dtype == torch.bfloat16


def test_a_loaded_project_saves_again_unchanged(project_path, tmp_path):
    save_project(project_path, rich_stack(), {"a": 1})
    loaded, meta = load_project(project_path)
    save_project(tmp_path / "copy.lep", loaded, meta)
    reloaded, _ = load_project(tmp_path / "copy.lep")
    for first, second in zip(loaded, reloaded):
        assert_same_content(first, second)


def test_a_directory_project_is_browsable(tmp_path):
    save_project(tmp_path / "project", make_stack(1), {})
    names = set(os.listdir(tmp_path / "project"))
    pngs = {"layer_000.png", "layer_000_mask.png", "layer_001.png", "layer_001_mask.png"}
    assert names == {"project.json", "tensors.safetensors"} | pngs
    manifest = json.loads((tmp_path / "project" / "project.json").read_text())
    assert manifest["format"] == "layered-edit-project" and manifest["version"] == FORMAT_VERSION


def test_a_tensor_shared_by_layers_is_stored_once_and_shared_after_load(project_path):
    background, first, second = make_stack(2)
    shared = background.negative_prompt_embeds
    layers = (background, first.replace(negative_prompt_embeds=shared), second.replace(negative_prompt_embeds=shared))
    save_project(project_path, layers, {})
    loaded, _ = load_project(project_path)
    assert loaded[1].negative_prompt_embeds is loaded[0].negative_prompt_embeds
    assert torch.equal(loaded[2].negative_prompt_embeds, shared)


def test_saving_again_replaces_the_project(project_path):
    save_project(project_path, make_stack(2), {"n": 2})
    save_project(project_path, make_stack(1), {"n": 1})
    loaded, meta = load_project(project_path)
    assert meta == {"n": 1} and len(loaded) == 2
    assert os.listdir(project_path.parent) == [project_path.name]


def _fail_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """Make owner.name raise on its `call`-th use: a disk that fills up mid-way through a save."""
    original = getattr(owner, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise OSError("disk full (simulated)")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, failing)


@pytest.mark.parametrize("fail_at", ["member", "swap"])
def test_a_failed_save_leaves_the_previous_project_intact_and_no_temp_files(project_path, monkeypatch, fail_at):
    old = make_stack(1)
    save_project(project_path, old, {"version": "old"})
    if project_path.suffix == ".lep":
        fail = (zipfile.ZipFile, "writestr", 3) if fail_at == "member" else (os, "replace", 1)
    else:
        fail = (Path, "write_bytes", 3) if fail_at == "member" else (os, "rename", 2)
    _fail_on_call(monkeypatch, *fail)

    with pytest.raises(OSError, match="simulated"):
        save_project(project_path, make_stack(3), {"version": "new"})

    monkeypatch.undo()
    loaded, meta = load_project(project_path)
    assert meta == {"version": "old"} and len(loaded) == len(old)
    assert_same_content(loaded[1], old[1])
    assert os.listdir(project_path.parent) == [project_path.name]


def test_save_refuses_to_replace_a_folder_that_is_not_a_project(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ValueError, match="Refusing to replace"):
        save_project(folder, make_stack(1), {})
    assert (folder / "holiday.jpg").read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["photos"]


def test_loading_a_missing_project_points_to_an_interrupted_saves_backup(tmp_path):
    save_project(tmp_path / "project", make_stack(1), {})
    os.rename(tmp_path / "project", tmp_path / ".project.old-0123abcd")  # as if a crash came between the renames
    with pytest.raises(FileNotFoundError, match=r"\.project\.old-0123abcd"):
        load_project(tmp_path / "project")


# --- the loader rejects bad projects ----------------------------------------------------------------------------------


def saved_directory(tmp_path: Path) -> Path:
    path = tmp_path / "project"
    save_project(path, make_stack(1), {})
    return path


def edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "project.json").read_text())
    edit(manifest)
    (path / "project.json").write_text(json.dumps(manifest))


def zip_members(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def directory_members(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in os.listdir(path)}


def test_loader_rejects_a_truncated_archive(tmp_path):
    path = tmp_path / "project.lep"
    save_project(path, make_stack(1), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProjectError, match="truncated or corrupt"):
        load_project(path)


def test_loader_rejects_a_project_from_a_newer_version(tmp_path):
    path = saved_directory(tmp_path)
    edit_manifest(path, lambda m: m.update(version=FORMAT_VERSION + 1))
    with pytest.raises(ProjectError, match="written by a newer layered-edit"):
        load_project(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format="something-else"), "not a layered-edit project"),
        (lambda m: m.pop("version"), "missing field 'version'"),
        (lambda m: m.update(layers={}), "field 'layers' must be list"),
        (lambda m: m["layers"][1].update(seed="7"), "field 'seed' must be int"),
        (lambda m: m["layers"][1].update(visible=1), "field 'visible' must be bool"),
        (lambda m: m["layers"][1]["schedule"].update(timesteps=[1, 2]), "2 timesteps, got 4 latents"),
        (lambda m: m["layers"][1]["tensors"].update(mask="nowhere"), "tensor 'nowhere' is not in the manifest"),
        (lambda m: m["layers"].reverse(), "must be kind 'background'"),
        (lambda m: m["layers"][0].update(image="missing.png"), "missing member missing.png"),
        (lambda m: m["layers"][0].update(image="../outside.png"), "contains '..'"),
        (lambda m: m["layers"][0].update(image="/etc/passwd"), "is an absolute path"),
        (lambda m: m["layers"][0].update(image="sub/layer.png"), "plain file name"),
        (lambda m: m["layers"][0].update(width=16), "expected a RGB PNG of 16x32"),
        (lambda m: m["layers"][0].update(image="layer_000_mask.png"), "expected a RGB PNG"),
    ],
)
def test_loader_rejects_an_inconsistent_manifest(tmp_path, edit, message):
    path = saved_directory(tmp_path)
    edit_manifest(path, edit)
    with pytest.raises(ProjectError) as error:
        load_project(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_loader_rejects_a_symlinked_member(tmp_path):
    path = saved_directory(tmp_path)
    outside = tmp_path / "outside.png"
    os.rename(path / "layer_000.png", outside)
    os.symlink(outside, path / "layer_000.png")
    with pytest.raises(ProjectError, match="layer_000.png is a symlink"):
        load_project(path)


def test_loader_rejects_a_tensor_whose_shape_differs_from_the_manifest(tmp_path):
    path = saved_directory(tmp_path)
    tensors = safetensors.torch.load((path / "tensors.safetensors").read_bytes())
    tensors["layer_001.prompt_embeds"] = torch.zeros(1, 3, 16, dtype=torch.float16)
    (path / "tensors.safetensors").write_bytes(safetensors.torch.save(tensors))
    with pytest.raises(ProjectError, match=r"'layer_001.prompt_embeds' is float16 \[1, 3, 16\]"):
        load_project(path)


def test_loader_never_unpickles_a_pickle_renamed_to_safetensors(tmp_path, monkeypatch):
    path = saved_directory(tmp_path)
    (path / "tensors.safetensors").write_bytes(pickle.dumps({"layer_000.mask": [0.0] * 10}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("the loader unpickled"))
    with pytest.raises(ProjectError, match="not a valid safetensors file"):
        load_project(path)


def test_loader_rejects_archive_members_named_outside_the_project(tmp_path):
    members = directory_members(saved_directory(tmp_path))
    for bad_name in ("../evil.txt", "/abs/evil.txt"):
        path = zip_members(tmp_path / "bad.lep", {**members, bad_name: b"x"})
        with pytest.raises(ProjectError, match="absolute path|contains '..'"):
            load_project(path)


def test_loader_rejects_a_zip_bomb_by_its_compression_ratio(tmp_path):
    members = directory_members(saved_directory(tmp_path))
    path = zip_members(tmp_path / "bomb.lep", {**members, "padding.bin": bytes(2_000_000)}, zipfile.ZIP_DEFLATED)
    with pytest.raises(ProjectError, match="zip bomb"):
        load_project(path)


def test_loader_rejects_a_small_member_that_expands_past_the_size_cap(tmp_path, monkeypatch):
    members = directory_members(saved_directory(tmp_path))
    path = zip_members(tmp_path / "bomb.lep", {**members, "padding.bin": bytes(2_000_000)}, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 200_000
    monkeypatch.setattr(memory.members, "MAX_COMPRESSION_RATIO", 10**6)  # let the size cap, not the ratio, catch it
    monkeypatch.setattr(memory.members, "MAX_PROJECT_BYTES", 1_000_000)
    with pytest.raises(ProjectError, match="byte limit"):
        load_project(path)


def test_loader_rejects_an_archive_over_the_size_cap(tmp_path, monkeypatch):
    path = tmp_path / "project.lep"
    save_project(path, make_stack(1), {})
    monkeypatch.setattr(memory.members, "MAX_PROJECT_BYTES", path.stat().st_size // 2)
    with pytest.raises(ProjectError, match="byte limit"):
        load_project(path)


def test_loader_rejects_a_directory_over_the_size_cap(tmp_path, monkeypatch):
    path = saved_directory(tmp_path)
    monkeypatch.setattr(memory.members, "MAX_PROJECT_BYTES", 4096)
    with pytest.raises(ProjectError, match="byte project limit"):
        load_project(path)


def test_loading_writes_nothing_anywhere(project_path, monkeypatch):
    save_project(project_path, rich_stack(), {})
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in project_path.parent.rglob("*"))

    def no_writes(original):
        def guarded(file, mode="r", *args, **kwargs):
            if any(flag in mode for flag in "wax+"):
                pytest.fail(f"load_project opened {file} for writing")
            return original(file, mode, *args, **kwargs)

        return guarded

    def no_os_writes(file, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            pytest.fail(f"load_project opened {file} for writing")
        return original_os_open(file, flags, *args, **kwargs)

    original_os_open = os.open
    monkeypatch.setattr(builtins, "open", no_writes(builtins.open))
    monkeypatch.setattr(io, "open", no_writes(io.open))
    monkeypatch.setattr(os, "open", no_os_writes)
    load_project(project_path)
    monkeypatch.undo()

    after = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in project_path.parent.rglob("*"))
    assert after == before
