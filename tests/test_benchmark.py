"""The benchmark's promises: metrics mean what they say, plans are honest, runs resume and scale out."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext

import numpy as np
import pytest

from benchmark import metrics
from benchmark import shapes_world as sw
from benchmark.cli import main
from benchmark.methods import METHODS, check_model, resolve, select
from benchmark.plans import (MULTIEDIT_PATH, Edit, Plan, fit_prompt, load_plans, long_shapes_plan,
                             multiedit_plans, pixel_box, shapes_plan)
from benchmark.report import CLIP_SKIPPED, merge
from benchmark.runner import RunConfig, run_benchmark, run_plan
from editor import EditSettings, Session

STEPS = 2


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir):
    pipeline = Session.from_pretrained(tiny_model_dir).pipeline
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _box(size, box):
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


# ----------------------------------------------------------------------------------------- metrics
def test_psnr_of_a_constant_offset_is_exact():
    reference = np.full((8, 8, 3), 100, dtype=np.uint8)
    region = np.ones((8, 8), dtype=bool)
    assert metrics.psnr(reference + 4, reference, region) == pytest.approx(20 * math.log10(255 / 4), abs=1e-9)
    assert metrics.max_abs_diff(reference + 4, reference, region) == 4


def test_psnr_is_infinite_when_identical_and_none_for_an_empty_region():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert metrics.psnr(image, image.copy(), np.ones((8, 8), bool)) == math.inf
    assert metrics.psnr(image, image, np.zeros((8, 8), bool)) is None
    assert metrics.max_abs_diff(image, image, np.zeros((8, 8), bool)) is None


def test_max_abs_diff_sees_one_channel_of_one_pixel_and_only_inside_the_region():
    reference = np.full((8, 8, 3), 200, dtype=np.uint8)
    image = reference.copy()
    image[2, 3, 1] = 7  # inside
    image[6, 6] = 0  # outside
    region = _box((8, 8), (0, 0, 5, 5))
    assert metrics.max_abs_diff(image, reference, region) == 193


def test_background_preservation_looks_outside_all_masks_so_far():
    background = np.full((16, 16, 3), 50, dtype=np.uint8)
    masks = [_box((16, 16), (0, 0, 8, 8)), _box((16, 16), (8, 8, 16, 16))]
    first = background.copy()
    first[masks[0]] = 255  # the edit paints only inside its mask
    second = first.copy()
    second[masks[1]] = 0
    second[0, 15] += 2  # ...but this one also touched a background pixel
    kept = metrics.background_preservation(background, [first, second], masks)
    assert kept[0] == {"psnr": math.inf, "max_abs_diff": 0, "pixels": 16 * 16 - 64}
    assert kept[1]["max_abs_diff"] == 2 and kept[1]["pixels"] == 16 * 16 - 128
    assert kept[1]["psnr"] == pytest.approx(10 * math.log10(255**2 / (3 * 2**2 / (128 * 3))))


def test_prior_layers_are_compared_in_their_visible_region_only():
    masks = [_box((16, 16), (0, 0, 10, 10)), _box((16, 16), (5, 5, 15, 15))]
    first = np.zeros((16, 16, 3), dtype=np.uint8)
    first[masks[0]] = 100
    second = first.copy()
    second[masks[1]] = 200  # occludes part of the first edit: that part is not "damage"
    prior = metrics.prior_layer_preservation([first, second], masks)
    assert prior[0] == []
    assert prior[1] == [{"layer": 0, "psnr": math.inf, "max_abs_diff": 0, "pixels": 100 - 25}]


def test_detector_success_and_persistence_on_drawn_objects():
    size = (64, 64)
    background = sw.render_background("grass", size)
    boxes = [(4, 4, 28, 28), (34, 30, 60, 58)]
    masks = [_box(size, b) for b in boxes]
    first = background.copy()
    sw.draw_object(first, "red", "star", boxes[0])
    second = first.copy()
    sw.draw_object(second, "blue", "circle", boxes[1])
    found = metrics.edit_success([first, second], masks, [("red", "star"), ("blue", "circle")])
    assert found[0]["edit"]["colour_found"] and found[0]["edit"]["shape_found"]
    assert found[1]["edit"]["shape_found"] and found[1]["earlier"][0]["shape_found"]
    wrong = metrics.edit_success([first], masks[:1], [("red", "heart")])
    assert wrong[0]["edit"]["colour_found"] and not wrong[0]["edit"]["shape_found"]
    erased = metrics.edit_success([first, background], masks, [("red", "star"), ("blue", "circle")])
    assert not erased[1]["edit"]["colour_found"] and not erased[1]["earlier"][0]["colour_found"]


# ----------------------------------------------------------------------------------------- plans
def test_boxes_scale_x_by_width_and_y_by_height():
    assert pixel_box((0, 0, 0.5, 1), (64, 32)) == (0, 0, 32, 32)
    assert pixel_box((0.25, 0.5, 0.75, 1.0), (64, 32)) == (16, 16, 48, 32)


def test_a_left_half_box_covers_the_left_half_of_a_non_square_session(pipeline, tiny_model_dir):
    session = Session(pipeline, model=str(tiny_model_dir), defaults=EditSettings(num_inference_steps=STEPS))
    plan = Plan(name="wide", background="a sky background", seed=3, size=(64, 32),
                edits=(Edit(prompt="a red star", box=(0.0, 0.0, 0.5, 1.0)),))
    results, _, strip = run_plan(session, plan)
    assert session.size == (64, 32) and strip.shape == (32, 128, 3)
    assert results["edits"][0]["box"] == [0, 0, 32, 32]
    mask = session.layers[1].user_mask > 0
    assert mask[:, :32].all() and not mask[:, 32:].any()


def test_shapes_plans_are_deterministic_honest_and_use_big_boxes():
    plan = shapes_plan(seed=5, index=3)
    assert plan == shapes_plan(seed=5, index=3) and plan != shapes_plan(seed=6, index=3)
    assert 3 <= len(plan.edits) <= 6 and plan.background == f"a {plan.meta['background_name']} background"
    for edit in plan.edits:
        assert edit.prompt == sw.object_prompt(edit.colour, edit.shape)
        assert edit.held_out == sw.is_held_out(edit.colour, edit.shape, plan.meta["background_name"])
        for size in ((32, 32), (64, 32), (512, 512)):
            x0, y0, x1, y1 = pixel_box(edit.box, size)
            assert (x1 - x0) * (y1 - y0) >= size[0] * size[1] / 9
    assert all(e.held_out for e in plan.edits[:3]), "held-out triples come first"
    assert len(long_shapes_plan(seed=0).edits) == 20


def test_multiedit_suite_keeps_x_horizontal_and_every_edit():
    plans = multiedit_plans(seed=0)
    assert len(plans) == 100 and sum(len(p.edits) for p in plans) == 381
    raw = json.loads(MULTIEDIT_PATH.read_text())["0"]
    assert plans[0].background == raw[0]["background_prompt"]
    assert [e.box for e in plans[0].edits] == [tuple(r["coordinates"]) for r in raw]  # not transposed
    assert plans[0].edits[0].clip_text == f"An image of {raw[0]['class']} in {raw[0]['background']}"


def test_long_prompts_are_cut_to_the_text_window_and_say_so(pipeline):
    long = " ".join(["a red star"] * 10)
    text, cut = fit_prompt(long, pipeline.check_prompt_length)
    assert cut and long.startswith(text)
    pipeline.check_prompt_length(text)
    with pytest.raises(ValueError):
        pipeline.check_prompt_length(" ".join(long.split()[:len(text.split()) + 1]))
    assert fit_prompt("a red star", pipeline.check_prompt_length) == ("a red star", False)


def test_user_plan_files_are_checked(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"background": "a sky background", "edits": [{"prompt": "a red star",
                                                                             "box": [0.6, 0, 0.2, 1]}]}))
    with pytest.raises(ValueError, match="x0 < x1"):
        load_plans(path, seed=0)


# ----------------------------------------------------------------------------------------- methods
def test_methods_the_editor_cannot_run_are_unavailable_with_a_reason():
    assert resolve("future", {"sharpness": 3}).reason == "setting sharpness does not exist in EditSettings yet"
    bad = resolve("typo", {"preserve": "everything"})
    assert not bad.available and "preserve" in bad.reason
    naive = resolve("naive", {"preserve": "latents"}, EditSettings(num_inference_steps=STEPS))
    assert naive.available and naive.settings["num_inference_steps"] == STEPS
    with pytest.raises(ValueError, match="unknown method"):
        select("naive,nonsense")


def test_distilled_guidance_is_unavailable_on_a_model_without_an_adapter(pipeline):
    assert not pipeline.has_guidance_adapter
    distilled = check_model(resolve("distilled", METHODS["distilled"]), pipeline)
    assert not distilled.available and distilled.reason


# ----------------------------------------------------------------------------------------- runs
def _bench(tiny_model_dir, out, *extra):
    return main(["--suite", "shapes", "--limit", "2", "--steps", str(STEPS), "--model", str(tiny_model_dir),
                 "--out", str(out), "--methods", "naive,full,distilled", *extra])


@pytest.fixture(scope="module")
def bench_out(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    assert _bench(tiny_model_dir, out) == 0
    return out


def test_one_command_writes_results_costs_report_sheets_and_plots(bench_out):
    results = json.loads((bench_out / "results.json").read_text())
    report = (bench_out / "report.md").read_text()
    assert CLIP_SKIPPED in report
    for name, method in results["methods"].items():  # every method is run or says why not
        assert method["settings"] is not None or f"| {name} | unavailable ({method['reason']})" in report
    scenes = results["scenes"]
    assert sorted(scenes) == ["shapes-000", "shapes-001"] and not results["failed"]
    full = scenes["shapes-000"].get("full")
    if full is not None:  # pixel preservation: the background outside all masks never changes
        assert all(e["background"]["max_abs_diff"] == 0 for e in full["edits"])
    for record in (r for by_method in scenes.values() for r in by_method.values()):
        assert all(e["unet_evals"] > 0 and e["memory_bytes"] > 0 and e["detection"] is not None
                   for e in record["edits"])
    costs = json.loads((bench_out / "costs.json").read_text())
    assert all(len(c["edit_seconds"]) == len(scenes[s][m]["edits"]) for s, by in costs["scenes"].items()
               for m, c in by.items())
    assert "seconds" not in json.dumps(results)
    for file in ("contact/shapes-000.png", "contact/shapes-001.png", "plots/preservation.png", "plots/latency.png"):
        assert (bench_out / file).stat().st_size > 0


def test_a_rerun_recomputes_only_the_missing_scene(tiny_model_dir, bench_out):
    before = (bench_out / "results.json").read_bytes()
    files = sorted((bench_out / "scenes").glob("*/*.json"))
    untouched = {f: f.stat().st_mtime_ns for f in files[1:]}
    files[0].unlink()  # an interrupted run: one (scene, method) pair is missing
    assert _bench(tiny_model_dir, bench_out) == 0
    assert files[0].is_file()
    assert {f: f.stat().st_mtime_ns for f in files[1:]} == untouched
    assert (bench_out / "results.json").read_bytes() == before
    with pytest.raises(ValueError, match="another run"):
        run_benchmark([], [], RunConfig(str(tiny_model_dir), "shapes", STEPS + 1, 0, None), bench_out)


class _Process:
    """accelerate.PartialState's view from one of `count` processes, run one after the other."""

    def __init__(self, index: int, count: int):
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0

    def split_between_processes(self, items):
        per, extra = divmod(len(items), self.num_processes)
        start = self.process_index * per + min(self.process_index, extra)
        return nullcontext(items[start:start + per + (self.process_index < extra)])

    def wait_for_everyone(self):
        pass


def test_two_processes_give_the_same_results_as_one(tiny_model_dir, bench_out, tmp_path):
    plans = [shapes_plan(0, 0), shapes_plan(0, 1)]
    defaults = EditSettings(num_inference_steps=STEPS)
    methods = select("naive,full,distilled", defaults)
    config = RunConfig(str(tiny_model_dir), "shapes", STEPS, 0, None)
    for index in (0, 1):  # in a real run they overlap; wait_for_everyone orders the steps that matter
        run_benchmark(plans, methods, config, tmp_path, device="cpu", state=_Process(index, 2))
    merge(tmp_path)
    assert (tmp_path / "results.json").read_bytes() == (bench_out / "results.json").read_bytes()
    assert len(list((tmp_path / "shards").glob("process-*.json"))) == 2


def _tiny_clip(folder):
    """A random CLIP with a character-level vocabulary, saved like a real one (model + processor)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab.update({char: len(vocab), f"{char}</w>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=8),
        projection_dim=8)).save_pretrained(folder)
    return folder


def test_clip_crop_score_reads_a_local_clip_folder(tmp_path, pipeline, tiny_model_dir):
    score = metrics.ClipCropScore(_tiny_clip(tmp_path))
    session = Session(pipeline, model=str(tiny_model_dir), defaults=EditSettings(num_inference_steps=STEPS))
    plan = Plan(name="clip", background="a sky background", seed=1,
                edits=(Edit(prompt="a red star", box=(0.1, 0.1, 0.6, 0.6), clip_text="an image of a red star in "
                            "the sky, far longer than this tiny clip's window of sixteen tokens"),))
    results, _, _ = run_plan(session, plan, clip=score)
    value = results["edits"][0]["clip_crop"]
    assert -100 <= value <= 100
    region = session.layers[1].user_mask > 0
    assert value == score(np.asarray(session.layers[1].image), region, plan.edits[0].clip_text)
