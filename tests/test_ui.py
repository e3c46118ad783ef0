"""The web UI, driven through its HTTP API with gradio_client, on tiny random SD components.

The app is launched in-process on a free port; every Client is a separate browser session.
"""

from __future__ import annotations

import json
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from tiny_models import IMAGE_SIZE

from editor import EditSettings, Session
from ui import app, controls, errors
from ui.canvas import canvas_value, display_scale, mask_from_canvas
from ui.cli import build_parser
from ui.handlers import Handlers
from ui_client import (CIRCLE, SCALE, STAR, assert_changed_only_inside, box_mask, captions, edit, empty_canvas,
                       generate, image_of, painted_canvas, settings, status_of, value)


@pytest.fixture(scope="module")
def server(ui_server):
    """conftest's app on the tiny model (no autosave)."""
    return ui_server


@pytest.fixture
def client(server):
    return Client(server[1], verbose=False)


# ------------------------------------------------------------------------------------------ the workflow
def test_generate_edit_undo_redo_reedit_save_and_load_is_bit_identical(client, server, tmp_path):
    background = generate(client)
    image0 = image_of(background)
    assert captions(background) == ["0: a grass background"] and value(background[2]) == 0

    star = edit(client, painted_canvas(tmp_path, background, STAR), "a red star")
    image1 = image_of(star)
    assert_changed_only_inside(image0, image1, box_mask(STAR))
    circle = edit(client, painted_canvas(tmp_path, star, CIRCLE), "a blue circle")
    image2 = image_of(circle)
    assert_changed_only_inside(image1, image2, box_mask(CIRCLE))
    assert captions(circle) == ["0: a grass background", "1: a red star", "2: a blue circle"]

    undone = client.predict(api_name="/undo")
    assert np.array_equal(image_of(undone), image1) and len(captions(undone)) == 2
    redone = client.predict(api_name="/redo")
    assert np.array_equal(image_of(redone), image2) and len(captions(redone)) == 3

    # Re-edit layer 1 with a new prompt; an empty canvas keeps its mask. Layer 2 is replayed on top.
    reedited = client.predict(index=1, canvas=empty_canvas(tmp_path, redone), prompt="a yellow heart",
                              seed_mode="session", seed=0, mask_mode="stroke", x0=0, y0=0, x1=1, y1=1,
                              regenerate_above=False, **settings(), api_name="/replace")
    image3 = image_of(reedited)
    assert captions(reedited)[1] == "1: a yellow heart" and value(reedited[2]) == 1
    assert status_of(reedited).startswith("Re-edited layer 1 'a yellow heart'") and "kept as they were" in \
        status_of(reedited)
    assert_changed_only_inside(image2, image3, box_mask(STAR) | box_mask(CIRCLE))
    assert not np.array_equal(image3[box_mask(STAR)], image2[box_mask(STAR)])

    project = client.predict(api_name="/save")
    assert project.endswith(".lep")
    reopened = Client(server[1], verbose=False).predict(handle_file(project), api_name="/load")
    assert np.array_equal(image_of(reopened), image3)
    assert captions(reopened) == captions(reedited)

    exported = client.predict(export_format=".zip", api_name="/export")
    with zipfile.ZipFile(exported) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        assert [layer["prompt"] for layer in manifest["layers"]] == ["a grass background", "a yellow heart",
                                                                   "a blue circle"]
        exported_image = np.asarray(Image.open(archive.open("image.png")).convert("RGB"))
        assert np.array_equal(exported_image, image3)
        for layer in manifest["layers"]:
            assert {layer["image"], layer["layer"], layer["mask"]} <= set(archive.namelist())
    layered = client.predict(export_format=".ora", api_name="/export")  # the format is the user's choice
    with zipfile.ZipFile(layered) as archive:
        assert archive.read("mimetype") == b"image/openraster" and "stack.xml" in archive.namelist()


def test_hide_show_and_remove_a_layer(client, tmp_path):
    image0 = image_of(background := generate(client, seed=5))
    star = edit(client, painted_canvas(tmp_path, background, STAR), "a red star")
    circle = edit(client, painted_canvas(tmp_path, star, CIRCLE), "a blue circle")
    hidden = client.predict(index=1, visible=False, api_name="/set_visible")
    assert captions(hidden)[1] == "1: a red star (hidden)"
    assert status_of(hidden).startswith("Layer 1 'a red star' hidden")
    assert np.array_equal(image_of(hidden)[box_mask(STAR)], image0[box_mask(STAR)])
    shown = client.predict(index=1, visible=True, api_name="/set_visible")
    assert np.array_equal(image_of(shown), image_of(circle))
    removed = client.predict(index=1, api_name="/remove")
    assert captions(removed) == ["0: a grass background", "1: a blue circle"]
    assert status_of(removed).startswith("Removed layer 1 'a red star'")
    assert np.array_equal(image_of(removed)[box_mask(STAR)], image0[box_mask(STAR)])


def test_box_and_stroke_box_masks(client, tmp_path):
    image0 = image_of(background := generate(client, seed=8))
    boxed = edit(client, painted_canvas(tmp_path, background), "a red star", mask_mode="box", box=(20, 2, 30, 9))
    assert_changed_only_inside(image0, image_of(boxed), box_mask((20, 2, 30, 9)))
    # Two small strokes; their bounding box is the mask.
    canvas = painted_canvas(tmp_path, boxed, (3, 16, 5, 18), (9, 24, 11, 27))
    stroke_box = edit(client, canvas, "a blue circle", mask_mode="stroke box")
    assert_changed_only_inside(image_of(boxed), image_of(stroke_box), box_mask((3, 16, 11, 27)))


def test_start_from_a_photo(client, tmp_path):
    photo = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    photo[:, :, 1] = np.linspace(0, 255, IMAGE_SIZE, dtype=np.uint8)[None, :]
    Image.fromarray(photo).save(tmp_path / "photo.png")
    started = client.predict(photo=handle_file(str(tmp_path / "photo.png")), prompt="a grass background",
                             seed_mode="fixed", seed=1, **settings(), api_name="/start_from_image")
    assert np.array_equal(image_of(started), photo)
    assert captions(started) == ["0: a grass background"]


def test_every_control_reaches_the_session(client, tmp_path):
    """Change one control at a time, edit, and read the new layer's recorded settings back."""
    changes = {"negative_prompt": "a dog", "num_inference_steps": 3, "guidance_scale": 3.0, "scheduler": "euler",
               "free_steps_ratio": 0.5, "attention": "qd-background", "background": "renoise", "preserve": "latents",
               "mask_dilation": 1, "mask_feather": 0, "mask_fit": "whole", "bcg_mask": "binary",
               "routing": "erode-dilate"}
    changes["guidance"] = "cfg"  # the only mode without a guidance adapter; see test_guidance_mode_control
    assert set(changes) == set(controls.SETTING_CONTROLS) & set(EditSettings.names())
    result = generate(client, seed=9)
    baseline = client.predict(index=0, api_name="/select_layer")
    names = list(controls.SETTING_CONTROLS)
    for layer, (name, changed) in enumerate(changes.items(), start=1):
        result = edit(client, painted_canvas(tmp_path, result, STAR), "a red star", **{name: changed})
        echoed = dict(zip(names, map(value, client.predict(index=layer, api_name="/select_layer")[4:4 + len(names)]),
                          strict=True))
        assert echoed[name] == changed, name
        if name != "guidance":
            assert baseline[4 + names.index(name)] != changed, f"{name}: pick a value that differs from the default"
    seeded = edit(client, painted_canvas(tmp_path, result, STAR), "a red star", seed_mode="fixed")
    selected = client.predict(index=len(changes) + 1, api_name="/select_layer")
    assert selected[2:4] == ("fixed", 0) and seeded[-1] == 0  # seed_mode + seed reach the Session too


def test_generating_events_take_every_settings_control(server):
    """generate, edit, Enter, replace, variations and start_from_image all read the same settings controls, then
    the view id (a repeated click is recognised by it; HTTP clients may leave it out)."""
    config = server[0].config
    inputs = {dep["api_name"]: dep["inputs"] for dep in config["dependencies"] if dep.get("api_name")}
    count = len(controls.SETTING_CONTROLS)
    tail = inputs["edit"][-count - 1:]
    for name in ("generate", "submit", "replace", "variations", "start_from_image"):
        assert inputs[name][-count - 1:] == tail
    # The HTTP API names each control's parameter after its setting (clients call predict(scheduler=...)).
    endpoints = server[0].get_api_info()["named_endpoints"]
    for name in ("generate", "edit", "replace", "start_from_image"):
        parameters = endpoints[f"/{name}"]["parameters"]
        assert [p["parameter_name"] for p in parameters][-count - 1:] == [*controls.SETTING_CONTROLS, "view"]
        assert parameters[-1]["parameter_has_default"]
    assert [p["parameter_name"] for p in endpoints["/edit"]["parameters"]][:8] == [
        "canvas", "prompt", "seed_mode", "seed", "mask_mode", "x0", "y0", "x1"]


def test_a_repeated_click_on_an_earlier_view_does_nothing(client, tmp_path):
    """The second click of a double click carries the view the first one replaced: it is dropped."""
    background = generate(client)
    seen = value(background[4])  # the view id the browser holds, sent back with every click
    first = edit(client, painted_canvas(tmp_path, background, STAR), "a red star", view=seen)
    assert captions(first)[-1] == "1: a red star" and value(first[4]) != seen
    edit(client, painted_canvas(tmp_path, background, STAR), "a red star", view=seen)  # the second click
    assert captions(client.predict(api_name="/undo")) == ["0: a grass background"]  # one edit was made


def test_two_browser_sessions_do_not_interfere(server, tmp_path):
    """Two clients edit at the same time; each sees exactly what a lone Session would have made."""
    demo, url = server
    plans = {"a": (1, "a red star", STAR), "b": (2, "a blue circle", CIRCLE)}
    clients = {key: Client(url, verbose=False) for key in plans}
    backgrounds = {key: generate(clients[key], seed=plans[key][0]) for key in plans}
    jobs = {key: clients[key].submit(canvas=painted_canvas(tmp_path, backgrounds[key], plans[key][2]),
                                     prompt=plans[key][1], seed_mode="session", seed=0, mask_mode="stroke",
                                     x0=0, y0=0, x1=1, y1=1, **settings(), api_name="/edit") for key in plans}
    results = {key: job.result(timeout=60) for key, job in jobs.items()}
    for key, (seed, prompt, box) in plans.items():
        alone = Session(demo.handlers.pipeline)
        alone.generate("a grass background", seed=seed, **settings())
        alone.edit(prompt, box_mask(box), **settings())
        assert np.array_equal(image_of(results[key]), np.asarray(alone.image))
        assert captions(results[key]) == ["0: a grass background", f"1: {prompt}"]
    assert not np.array_equal(image_of(results["a"]), image_of(results["b"]))


def test_errors_are_friendly_messages(client, tmp_path):
    with pytest.raises(AppError, match="no image yet"):
        client.predict(api_name="/undo")
    background = generate(client)
    with pytest.raises(AppError, match="paint the area to edit") as raised:
        edit(client, empty_canvas(tmp_path, background), "a red star")
    assert "Traceback" not in str(raised.value)
    with pytest.raises(AppError, match="too long|longer|tokens"):
        generate(client, prompt=" ".join(["a red star"] * 20))
    with pytest.raises(AppError, match="write a prompt"):  # an empty prompt is said, not run
        edit(client, painted_canvas(tmp_path, background, STAR), "  ")
    (tmp_path / "notes.txt").write_text("not a project")
    with pytest.raises(AppError, match=r"\.lep"):
        client.predict(handle_file(str(tmp_path / "notes.txt")), api_name="/load")
    (tmp_path / "broken.lep").write_bytes(b"not a zip")
    with pytest.raises(AppError) as raised:
        client.predict(handle_file(str(tmp_path / "broken.lep")), api_name="/load")
    assert "Traceback" not in str(raised.value) and str(raised.value).strip()
    with pytest.raises(AppError, match="cannot be removed"):
        client.predict(index=0, api_name="/remove")


# ------------------------------------------------------------------------------------------ pure helpers
def test_strokes_map_back_to_image_pixels():
    layer = np.zeros((IMAGE_SIZE * SCALE, IMAGE_SIZE * SCALE, 4), dtype=np.uint8)
    layer[3 * SCALE:5 * SCALE, 6 * SCALE:10 * SCALE, 3] = 255  # image pixels x 6..9, y 3..4
    layer[20 * SCALE, 20 * SCALE, 3] = 255  # one canvas pixel, not at an image pixel's centre
    value = {"background": None, "layers": [layer], "composite": None}
    mask = mask_from_canvas(value, (IMAGE_SIZE, IMAGE_SIZE), "stroke")
    assert np.array_equal(mask, box_mask((6, 3, 10, 5)))
    assert mask_from_canvas(value, (IMAGE_SIZE, IMAGE_SIZE), "stroke box") == (6, 3, 21, 21)
    assert mask_from_canvas(value, (IMAGE_SIZE, IMAGE_SIZE), "box", (1, 2, 3, 4)) == (1, 2, 3, 4)
    assert mask_from_canvas({"layers": []}, (IMAGE_SIZE, IMAGE_SIZE)) is None
    thin = np.zeros_like(layer)
    thin[0, :, 3] = 255
    with pytest.raises(ValueError, match="too thin"):
        mask_from_canvas({"layers": [thin]}, (IMAGE_SIZE, IMAGE_SIZE), "stroke")


def test_settings_controls_become_edit_settings():
    values = settings(num_inference_steps=4.0, mask_feather=3.0, negative_prompt="blurry")
    converted = controls.SettingsControls(**values).edit_settings()
    assert converted["num_inference_steps"] == 4 and isinstance(converted["mask_feather"], int)
    assert set(converted) == set(controls.SETTING_CONTROLS) and set(converted) <= set(EditSettings.names())
    assert EditSettings().updated(**converted).negative_prompt == "blurry"
    with pytest.raises(ValueError, match="whole number"):
        controls.SettingsControls(**settings(num_inference_steps=2.5)).edit_settings()
    distilled = controls.SettingsControls(**settings(guidance="distilled", negative_prompt="x")).edit_settings()
    assert distilled["negative_prompt"] == ""
    assert controls.SettingsControls(**settings(negative_prompt=None)).edit_settings()["negative_prompt"] == ""


class _Pipeline:
    default_size = (64, 64)

    def __init__(self, adapter: bool, fast_steps: int | None = None):
        self.has_guidance_adapter = adapter
        self.fast_adapter = object() if fast_steps else None
        self.fast_steps = fast_steps


def _component(demo, label):
    return next(block for block in demo.blocks.values() if getattr(block, "label", None) == label)


@pytest.mark.parametrize(("adapter", "fast"), [(False, None), (True, None), (False, 4), (True, 4)])
def test_guidance_mode_control(adapter, fast):
    demo = app.build_app(_Pipeline(adapter, fast))
    control = _component(demo, "Guidance mode")
    modes = ["cfg", *(["distilled"] if adapter else []), *(["fast"] if fast else [])]
    assert control is demo.components.settings["guidance"] and control.interactive is (len(modes) > 1)
    assert [choice[1] for choice in control.choices] == modes  # fast only with a fast adapter
    steps = EditSettings().num_inference_steps
    labels = dict((mode, label) for label, mode in control.choices)
    assert labels["cfg"] == f"CFG · {2 * steps} UNet passes"  # each choice says what an edit costs
    assert labels.get("distilled", f"distilled · {steps} UNet passes") == f"distilled · {steps} UNet passes"
    assert labels.get("fast", "fast · 4 UNet passes") == "fast · 4 UNet passes"


def test_choosing_fast_guidance_fixes_steps_and_scheduler_and_disables_the_negative_prompt():
    handlers = Handlers(_Pipeline(adapter=True, fast_steps=4))
    fast = handlers.guidance_changed("fast", 30.0, "euler", None)
    negative, steps, scheduler = (fast[f"setting:{name}"] for name in ("negative_prompt", "num_inference_steps",
                                                                        "scheduler"))
    assert negative["interactive"] is False and "no negative prompt" in negative["info"]
    assert (steps["value"], steps["interactive"]) == (4, False) and "its adapter's 4 steps" in steps["info"]
    assert (scheduler["value"], scheduler["interactive"]) == ("ddim", False)
    assert fast["steps_before_fast"] == (30.0, "euler")
    # While fast is chosen, the other choices still say what they cost at the user's 30 steps.
    labels = handlers.cost_changed(4, 7.5, "fast", fast["steps_before_fast"])["setting:guidance"]["choices"]
    assert labels == [("CFG · 60 UNet passes", "cfg"), ("distilled · 30 UNet passes", "distilled"),
                      ("fast · 4 UNet passes", "fast")]
    # At a guidance scale <= 1 the pipeline turns guidance off: CFG is then one pass per step too.
    labels = handlers.cost_changed(30, 1.0, "cfg", None)["setting:guidance"]["choices"]
    assert labels[0] == ("CFG · 30 UNet passes", "cfg")
    back = handlers.guidance_changed("cfg", 4, "ddim", fast["steps_before_fast"])
    assert back["setting:num_inference_steps"]["value"] == 30.0 and back["setting:num_inference_steps"]["interactive"]
    assert back["setting:scheduler"]["value"] == "euler" and back["setting:scheduler"]["interactive"]
    assert back["setting:negative_prompt"]["interactive"] is True and back["steps_before_fast"] is None
    distilled = handlers.guidance_changed("distilled", 30, "euler", None)
    assert distilled["setting:negative_prompt"]["interactive"] is False
    assert distilled["setting:num_inference_steps"]["value"] == 30 and distilled["setting:num_inference_steps"][
        "interactive"]
    # A selected fast layer put the fast steps in the controls: leaving fast then brings the defaults back.
    assert handlers.guidance_changed("fast", 4, "ddim", None)["steps_before_fast"] == (
        EditSettings().num_inference_steps, EditSettings().scheduler)


def test_fast_guidance_sends_the_adapters_steps_whatever_the_controls_hold():
    fast = controls.SettingsControls(**settings(guidance="fast", num_inference_steps=30.0, scheduler="euler",
                                                negative_prompt="blurry")).edit_settings(fast_steps=2)
    assert (fast["num_inference_steps"], fast["scheduler"], fast["negative_prompt"]) == (2, "ddim", "")
    cfg = controls.SettingsControls(**settings(num_inference_steps=30.0, scheduler="euler")).edit_settings(2)
    assert (cfg["num_inference_steps"], cfg["scheduler"]) == (30, "euler")


@pytest.fixture(scope="module")
def fast_pipeline(tmp_path_factory):
    """The tiny pipeline with a fast adapter (2 steps) trained for one step: real, if not good."""
    from tiny_models import tiny_pipeline

    from pipelines.guidance import load_guidance_adapter
    from training.distill import DistillConfig, distill, list_prompts

    folder = tmp_path_factory.mktemp("adapters") / "fast"
    config = DistillConfig(mode="fast", lora_gain="one", steps=1, rank=4, val_prompts=1, fast_steps=2, teacher_steps=4,
                           accumulate=1)
    distill(tiny_pipeline(), folder, config, list_prompts(["a red star", "a blue circle"]), progress=False,
            log=lambda _: None)
    pipeline = tiny_pipeline()
    load_guidance_adapter(pipeline, folder, "fast")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_generate_edit_and_reedit_in_fast_mode_run_the_adapters_steps_and_say_so(fast_pipeline):
    handlers = Handlers(fast_pipeline)
    assert controls.guidance_choices(fast_pipeline) == ["cfg", "fast"] and fast_pipeline.fast_steps == 2
    fast = controls.SettingsControls(**settings(guidance="fast", num_inference_steps=30.0, scheduler="euler",
                                                negative_prompt="blurry"))  # steps the fast adapter does not run
    final = list(handlers.generate(None, "a grass background", "fixed", 1, fast))[-1]
    session = final["state"]
    assert "fast: " in final["status"] and "2 UNet passes" in final["status"]
    final = list(handlers.edit(session, None, "a red star", "fixed", 3, "box", 4, 4, 20, 20, fast))[-1]
    assert final["status"].startswith("Painted layer 1 'a red star'")
    assert "fast: " in final["status"] and "2 UNet passes" in final["status"]
    final = list(handlers.replace(session, 1, None, "a blue circle", "fixed", 4, "box", 4, 4, 20, 20, False,
                                  fast))[-1]
    assert final["status"].startswith("Re-edited layer 1 'a blue circle'")
    for layer in session.layers:
        recorded = dict(layer.settings)
        assert (recorded["guidance"], recorded["num_inference_steps"], recorded["scheduler"]) == ("fast", 2, "ddim")
        assert layer.info["unet_evals"] == 2 and layer.negative_prompt == ""
    assert handlers.select_layer(session, 1)["setting:guidance"] == "fast"


def test_the_canvas_shows_the_image_upscaled_without_strokes():
    image = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    value = canvas_value(Image.fromarray(image))
    assert value["layers"] == [] and value["background"].shape == (IMAGE_SIZE * SCALE, IMAGE_SIZE * SCALE, 3)
    assert np.array_equal(value["background"][::SCALE, ::SCALE], image)
    assert np.array_equal(value["background"], image.repeat(SCALE, 0).repeat(SCALE, 1))
    assert Handlers.canvas(None, None) is None  # the follow-up event after every change shows the session's image:
    session = SimpleNamespace(image=Image.fromarray(image), layers=(SimpleNamespace(kind="background"),))
    assert np.array_equal(Handlers.canvas(session, (0, 0))["background"], value["background"])


def test_selecting_a_layer_keeps_the_strokes_painted_and_a_new_image_drops_them():
    image = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    session = SimpleNamespace(image=Image.fromarray(image), layers=(SimpleNamespace(kind="background"),))
    side = IMAGE_SIZE * SCALE
    stroke = np.zeros((side, side, 4), dtype=np.uint8)
    stroke[10:20, 10:40] = (255, 45, 117, 153)
    painted = {"background": None, "layers": [stroke], "composite": None}
    kept = Handlers.canvas(session, (1, 0), painted)
    assert len(kept["layers"]) == 1 and np.array_equal(kept["layers"][0], stroke)
    assert np.array_equal(kept["composite"], kept["background"])  # the editor draws the strokes over it once
    assert Handlers.canvas(session, (2, 0))["layers"] == []  # after an edit: a clean canvas
    other_size = {"layers": [stroke[: side // 2]]}  # strokes made on an image of another size are not kept
    assert Handlers.canvas(session, (3, 0), other_size)["layers"] == []


def test_the_canvas_is_an_integer_upscale():
    assert display_scale((64, 64)) == 8 and display_scale((512, 512)) == 1
    assert display_scale((32, 32)) == 16 and display_scale((768, 512)) == 1


def test_cli_ui_command_binds_localhost_and_offers_no_share_link():
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, "embedded")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ui", "--share"])


def test_handlers_wrap_errors_and_keep_gradio_errors():
    import gradio as gr

    def fails(kind):
        raise kind("the message")

    for kind in (ValueError, TypeError, IndexError):
        with pytest.raises(gr.Error, match="the message"):
            errors.friendly(fails)(kind)
    with pytest.raises(gr.Error, match="the message"):
        errors.friendly(fails)(gr.Error)


def test_library_warnings_become_ui_warnings(monkeypatch):
    import warnings

    shown = []
    monkeypatch.setattr(errors.gr, "Warning", shown.append)

    def warns():
        warnings.warn("the mask covers the whole image", stacklevel=1)
        return "done"

    assert errors.friendly(warns)() == "done"
    assert shown == ["the mask covers the whole image"]


def test_uploads_are_limited_and_the_server_binds_localhost(server):
    demo, url = server
    assert url.startswith("http://127.0.0.1:")
    assert demo.max_file_size is not None and demo.max_file_size <= 200 * 1024**2


# ------------------------------------------------------------------------------------------ a scribble means "here"
def stroke_layer(segments, scale=SCALE, radius=2) -> np.ndarray:
    """A canvas stroke layer (RGBA) painting each segment ((x0, y0), (x1, y1)) in image px with a round brush."""
    from PIL import ImageDraw

    layer = Image.new("RGBA", (IMAGE_SIZE * scale, IMAGE_SIZE * scale))
    draw = ImageDraw.Draw(layer)
    for (x0, y0), (x1, y1) in segments:
        points = [(x0 * scale, y0 * scale), (x1 * scale, y1 * scale)]
        draw.line(points, fill=(255, 45, 117, 153), width=2 * radius * scale)
        for x, y in points:
            draw.ellipse((x - radius * scale, y - radius * scale, x + radius * scale, y + radius * scale),
                         fill=(255, 45, 117, 153))
    return np.asarray(layer)


def test_a_zigzag_scribble_means_the_area_it_covers():
    from ui.canvas import scribble_area

    zigzag = [((8, 8), (22, 10)), ((22, 10), (8, 14)), ((8, 14), (22, 17)), ((22, 17), (9, 22))]
    painted = stroke_layer(zigzag)[..., 3] > 0
    area = mask_from_canvas({"layers": [stroke_layer(zigzag)]}, (IMAGE_SIZE, IMAGE_SIZE))  # the default mode
    literal = mask_from_canvas({"layers": [stroke_layer(zigzag)]}, (IMAGE_SIZE, IMAGE_SIZE), "stroke")
    assert np.array_equal(area, scribble_area(painted, (IMAGE_SIZE, IMAGE_SIZE)))
    assert (literal <= area).all() and area.sum() > 1.3 * literal.sum()  # the gaps between the strokes are in
    assert area[8:20, 10:20].all()  # the middle of the zigzag, including its gaps
    assert not area[:4].any() and not area[26:].any() and not area[:, :4].any() and not area[:, 27:].any()


def test_separate_dabs_become_one_area_and_the_margin_grows_it():
    from ui.canvas import scribble_area

    dabs = stroke_layer([((6, 6), (6, 6)), ((24, 8), (24, 8)), ((14, 24), (14, 24))])[..., 3] > 0
    area = scribble_area(dabs, (IMAGE_SIZE, IMAGE_SIZE), margin=0.0)  # at least 1 px of margin anyway
    assert area[14, 14] and area[8, 15] and area[16, 10]  # inside the triangle the three dabs span
    grown = scribble_area(dabs, (IMAGE_SIZE, IMAGE_SIZE), margin=3 / IMAGE_SIZE)
    assert (area <= grown).all() and grown.sum() > area.sum()
    # The canvas may be any integer multiple of the image: the same scribble at 1x gives about the same area.
    small = np.asarray(Image.fromarray(dabs).resize((IMAGE_SIZE, IMAGE_SIZE), Image.NEAREST))
    assert (scribble_area(small, (IMAGE_SIZE, IMAGE_SIZE), 0.0) ^ area).sum() <= 0.1 * area.sum()


def test_the_outlines_never_cover_an_image_pixel_centre():
    from ui.canvas import ROUGH_OUTLINE, TIGHT_OUTLINE, draw_outlines, outline

    tight, rough = box_mask((10, 10, 16, 15)), box_mask((6, 6, 24, 22))
    image = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 40, dtype=np.uint8)
    shown = draw_outlines(canvas_value(image)["background"], tight, rough, SCALE)
    centres = shown[SCALE // 2::SCALE, SCALE // 2::SCALE]
    assert np.array_equal(centres, image)  # what an image pixel shows at its centre is the pixel
    assert (shown == TIGHT_OUTLINE).all(axis=2).sum() == outline(tight, SCALE, inside=True).sum()
    assert (shown == ROUGH_OUTLINE).all(axis=2).any()  # dashed: some of the line
    assert (shown == ROUGH_OUTLINE).all(axis=2).sum() < outline(rough, SCALE, inside=False).sum()
    drawn = (shown != 40).any(axis=2)
    assert not drawn[11 * SCALE:14 * SCALE, 11 * SCALE:15 * SCALE].any()  # the object's inside is untouched


def test_a_photo_of_another_shape_is_cropped_or_fitted_and_says_so():
    from ui.canvas import fit_photo

    photo = Image.new("RGB", (300, 200), (200, 30, 30))
    same, note = fit_photo(photo, (64, 64), "crop")
    assert same is photo and "300x200" in note and "cropped" in note  # Session.start_from_image crops it
    fitted, note = fit_photo(photo, (64, 64), "fit")
    assert fitted.size == (64, 64) and "fitted" in note
    pixels = np.asarray(fitted)
    assert (pixels[32, :, 0] > 150).all()  # the whole width is the photo
    assert np.array_equal(pixels[0, 0], (200, 30, 30))  # the bars: the photo's mean colour
    square = Image.new("RGB", (128, 128))
    assert fit_photo(square, (64, 64), "fit")[0] is square
    with pytest.raises(ValueError, match="photo fit"):
        fit_photo(photo, (64, 64), "stretch")


# ------------------------------------------------------------------------------------------ the prompt box
def test_the_prompt_check_counts_tokens_and_flags_unknown_words():
    from tiny_models import MAX_TOKENS, tiny_tokenizer

    from ui.prompts import check_prompt, closed_vocabulary

    tokenizer = tiny_tokenizer()
    ok = check_prompt(tokenizer, "a red star")
    assert (ok.tokens, ok.window, ok.unknown, ok.too_long) == (5, MAX_TOKENS, (), False)
    assert ok.markdown() == f"5 / {MAX_TOKENS} tokens"
    long = check_prompt(tokenizer, " ".join(["a red star"] * 5))
    assert long.too_long and f"17 / {MAX_TOKENS} tokens" in long.markdown() and "too long by 1" in long.markdown()
    odd = check_prompt(tokenizer, "a lovely red Zebra star, lovely")
    assert odd.unknown == ("lovely", "Zebra") and "'lovely', 'Zebra'" in odd.markdown()
    assert check_prompt(tokenizer, "  ").empty and "empty" in check_prompt(tokenizer, " ").markdown()
    words = closed_vocabulary(tokenizer)
    assert "star" in words and "<unk>" not in words and words == sorted(words)


def test_an_open_vocabulary_lists_no_words_and_flags_none():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ui.prompts import check_prompt, closed_vocabulary

    core = Tokenizer(models.BPE(vocab={"<unk>": 0, **{c: 1 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}},
                                merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    open_tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", model_max_length=77)
    assert closed_vocabulary(open_tokenizer) is None  # any word splits into letters
    assert check_prompt(open_tokenizer, "a lovely zebra").unknown == ()


# ------------------------------------------------------------------------------------------ live preview and Cancel
def test_a_run_shows_previews_every_few_steps_and_returns_the_result():
    import queue
    import threading

    from ui.runs import Preview, run_with_preview

    taken = queue.Queue()

    def call(callback):
        for step in range(10):
            callback(None, step, 999 - step, {"latents": step})
            if (step + 1) % 4 == 0:
                taken.get(timeout=10)  # the model waits for the reader here, so no preview is skipped
        return "the result"

    flag = threading.Event()
    run = run_with_preview(call, decode=lambda latents: np.full((2, 2, 3), latents, np.uint8), total=10,
                           cancel=flag, every=4)
    previews = []
    with pytest.raises(StopIteration) as done:
        while True:
            previews.append(next(run))
            taken.put(True)
    assert done.value.value == "the result"
    assert all(isinstance(p, Preview) and p.total == 10 for p in previews)
    assert [(p.step, p.image[0, 0, 0]) for p in previews] == [(4, 3), (8, 7)]  # the latents after steps 4 and 8
    assert not flag.is_set()  # a run that ended leaves the tab's flag alone (the next variation runs on it)


def test_cancel_stops_at_the_next_step_and_a_closed_run_is_cancelled():
    import threading

    from ui.runs import Cancelled, Runs, run_with_preview

    reached = []
    started = threading.Event()

    def call(callback):
        for step in range(1000):
            reached.append(step)
            started.set()
            callback(None, step, 0, {"latents": step})
            threading.Event().wait(0.002)
        return "finished"

    runs, key = Runs(), object()
    flag = runs.start(key)
    run = run_with_preview(call, decode=lambda latents: np.zeros((1, 1, 3), np.uint8), total=1000, cancel=flag)
    thread = threading.Thread(target=lambda: started.wait(5) and runs.cancel(key))
    thread.start()
    with pytest.raises(Cancelled) as cancelled:
        while True:
            next(run)
    thread.join()
    assert cancelled.value.step == reached[-1] < 999
    runs.finish(key)
    assert runs.cancel(key) is False  # nothing runs now

    reached.clear()
    closed = run_with_preview(call, decode=lambda latents: None, total=1000, cancel=threading.Event(), every=1)
    next(closed)  # the first preview: the call is running
    closed.close()  # the tab went away: the call is cancelled and awaited
    assert len(reached) < 1000


def test_variations_seeds():
    assert controls.variation_seeds("fixed", 5, 3) == [5, 6, 7]
    assert len(set(controls.variation_seeds("random", None, 4))) == 4
    with pytest.raises(ValueError, match="between 2 and"):
        controls.variation_seeds("fixed", 5, 9)


def test_preview_edit_adds_no_layer_and_edit_with_its_seed_paints_the_same(server):
    """Session.preview_edit (variations): the session is unchanged, and edit() with the seed gives that layer."""
    session = Session(server[0].handlers.pipeline)
    session.generate("a grass background", seed=2, **settings())
    before = session.layers
    candidate = session.preview_edit("a red star", STAR, seed=11, **settings())
    assert session.layers is before and not session.can_redo and len(session.layers) == 1
    session.edit("a red star", STAR, seed=11, **settings())
    assert np.array_equal(np.asarray(session.layers[1].image), np.asarray(candidate.image))
    assert np.array_equal(np.asarray(session.layers[1].mask), np.asarray(candidate.mask))
    with pytest.raises(Exception, match="no background"):
        Session(server[0].handlers.pipeline).preview_edit("a red star", STAR)


def test_nothing_drawn_is_said_in_the_status(monkeypatch):
    shown = []
    monkeypatch.setattr(gr_module(), "Warning", lambda message, **kwargs: shown.append(message))
    layer = SimpleNamespace(prompt="a red circle", info={"changed_pixels": 1, "region_pixels": 400, "seconds": 0.5})
    status = Handlers._edit_report(SimpleNamespace(pipeline=None, layers=[None, layer]), 1, "Painted")
    assert status.startswith("**Nothing was drawn** for 'a red circle'") and "larger area" in status
    assert "another seed" in status and shown and "Nothing was drawn" in shown[0]
    drawn = SimpleNamespace(prompt="a red circle", info={"changed_pixels": 90, "region_pixels": 400, "seconds": 0.5})
    assert Handlers._edit_report(SimpleNamespace(pipeline=None, layers=[None, drawn]), 1, "Painted").startswith(
        "Painted layer 1 'a red circle': 90 px changed")
    timed = SimpleNamespace(prompt="a red circle", info={**drawn.info, "guidance": "cfg", "unet_evals": 40})
    assert Handlers._edit_report(SimpleNamespace(pipeline=None, layers=[None, timed]), 1, "Painted").endswith(
        "90 px changed · CFG: 0.50 s, 40 UNet passes.")  # what the edit took, and in which guidance mode


def gr_module():
    import gradio

    return gradio
