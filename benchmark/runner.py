"""Run plans through editor.Session for every method, one result file per (scene, method).

The runner never calls the pipeline: it paints through `Session.generate` / `Session.edit` and reads
the layer records the session keeps. Work is split by scene between processes with accelerate
(`accelerate launch --multi_gpu --num_processes 2 -m benchmark ...` or `torchrun --nproc_per_node 2
-m benchmark ...`, also on a CPU-only machine; a plain `python -m benchmark` is one process). Each
process writes its own scene files atomically, and finished (scene, method) pairs are skipped on a
rerun, so an interrupted benchmark resumes where it stopped. The main process merges
the scene files into results.json, costs.json, the report and the figures (benchmark.report).

Every method edits the same plans with the same session seeds (`plans.with_seeds`), so any two
methods' results pair up edit by edit. Long-session plans (meta part "long") run LONG_METHODS only.

Layout of --out:
    run.json                     what was asked: config (model, suite, steps, seed, seeds, ...), plans, methods
    scenes/<scene>/<method>.json deterministic results + this pair's costs
    scenes/<scene>/<method>.png  the background and the image after each edit, side by side
    shards/process-<k>.json      per-process costs (peak memory, pairs run)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from benchmark import metrics
from benchmark.methods import Method, check_model, runs_on
from benchmark.plans import Plan, fit_prompt, pixel_box
from editor import EditSettings, Session
from memory import png_bytes, write_atomic

PSNR_DECIMALS = 4


@dataclass(frozen=True)
class RunConfig:
    """What makes two runs' results comparable: a rerun into the same --out must match it."""

    model: str
    suite: str
    steps: int
    seed: int
    clip: str | None
    seeds: int = 1  # session seeds per scene
    long_sessions: int = 0  # 24-edit plans run next to the suite
    preset: str = "default"  # editor.settings.PRESETS: the settings the methods build on

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------- files
def json_bytes(value) -> bytes:
    """Canonical JSON: sorted keys, PSNR rounded, infinity written as the string "inf" (strict JSON)."""
    return (json.dumps(_json_safe(value), indent=1, sort_keys=True) + "\n").encode()


def _json_safe(value):
    if isinstance(value, float):
        return "inf" if math.isinf(value) else round(value, PSNR_DECIMALS)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def scene_paths(out: Path, scene: str, method: str) -> tuple[Path, Path]:
    folder = out / "scenes" / scene
    return folder / f"{method}.json", folder / f"{method}.png"


def is_finished(out: Path, scene: str, method: str) -> bool:
    """A pair is done when its result file says "ok" and its image strip exists (failures are retried)."""
    result, strip = scene_paths(out, scene, method)
    try:
        return json.loads(result.read_text())["status"] == "ok" and strip.is_file()
    except (OSError, ValueError, KeyError):
        return False


def check_run_config(out: Path, config: RunConfig) -> None:
    """Refuse to mix results of different models, suites, step counts, seeds, CLIP models or presets in one --out."""
    path = out / "run.json"
    if not path.is_file():
        return
    previous = json.loads(path.read_text())["config"]
    if previous != config.to_dict():
        changed = {k: (previous.get(k), v) for k, v in config.to_dict().items() if previous.get(k) != v}
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ValueError(f"{out} holds results of another run ({listed}); use another --out or the same options")


# ----------------------------------------------------------------------------------------- one plan
def run_plan(session: Session, plan: Plan, clip: metrics.ClipCropScore | None = None) -> tuple[dict, dict, np.ndarray]:
    """Paint `plan` in `session` (which must be empty); return (results, costs, image strip)."""
    check_length = session.pipeline.check_prompt_length

    # 1. The background: layer 0
    background_prompt, background_cut = fit_prompt(plan.background, check_length)
    width, height = plan.size or (None, None)
    started = time.perf_counter()
    session.generate(background_prompt, seed=plan.seed, width=width, height=height)
    background_seconds = time.perf_counter() - started

    # 2. The edits, in order
    prompts, boxes, seconds = [], [], []
    for edit in plan.edits:
        prompts.append(fit_prompt(edit.prompt, check_length))
        boxes.append(pixel_box(edit.box, session.size))
        started = time.perf_counter()
        session.edit(prompts[-1][0], boxes[-1], seed=edit.seed)
        seconds.append(time.perf_counter() - started)

    # 3. Metrics from the layer records the session kept
    layers = session.layers
    background = np.asarray(layers[0].image)
    steps = [np.asarray(layer.image) for layer in layers[1:]]
    masks = [np.asarray(layer.user_mask) > 0 for layer in layers[1:]]
    kept = metrics.background_preservation(background, steps, masks)
    prior = metrics.prior_layer_preservation(steps, masks)
    judged = all(edit.colour and edit.shape for edit in plan.edits)
    detected = metrics.edit_success(steps, masks, [(e.colour, e.shape) for e in plan.edits]) if judged else None
    seen = metrics.what_users_see(background, steps, masks, [e.colour for e in plan.edits])
    edits = []
    for i, (edit, layer) in enumerate(zip(plan.edits, layers[1:])):
        edits.append({
            "index": i + 1, "prompt": prompts[i][0], "prompt_truncated": prompts[i][1], "box": list(boxes[i]),
            "seed": layer.seed, "held_out": edit.held_out, "bcg_source": layer.info.get("bcg"),
            "unet_evals": layer.info.get("unet_evals"), "memory_bytes": layer.nbytes,
            "background": kept[i], "prior_layers": prior[i], **seen[i],
            "detection": None if detected is None else detected[i],
            "clip_crop": None if clip is None else clip(steps[i], masks[i], edit.clip_text or prompts[i][0]),
        })
    results = {
        "status": "ok", "size": list(session.size), "group": plan.meta.get("scene", plan.name),
        "part": plan.meta.get("part", "main"),
        "background": {"prompt": background_prompt, "prompt_truncated": background_cut, "seed": layers[0].seed,
                       "unet_evals": layers[0].info.get("unet_evals"), "memory_bytes": layers[0].nbytes},
        "edits": edits,
    }
    costs = {"background_seconds": background_seconds, "edit_seconds": seconds}
    return results, costs, np.concatenate([background, *steps], axis=1)


# ----------------------------------------------------------------------------------------- the benchmark
def run_pair(pipeline, model: str, plan: Plan, method: Method, clip, out: Path) -> dict:
    """Run one (scene, method) pair in a fresh Session and write its files; returns the result record."""
    session = Session(pipeline, model=model, defaults=EditSettings.from_dict(method.settings))
    on_cuda = torch.cuda.is_available() and pipeline.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    result_path, strip_path = scene_paths(out, plan.name, method.name)
    try:
        results, costs, strip = run_plan(session, plan, clip)
    except Exception as error:  # a failed pair is reported (and retried on a rerun), not fatal to the run
        record = {"status": "failed", "error": f"{type(error).__name__}: {error}", "scene": plan.name,
                  "method": method.name}
        write_atomic(result_path, json_bytes(record), parents=True)
        return record
    costs["peak_rss_bytes"] = metrics.peak_rss_bytes()  # the process's high-water mark so far
    costs["cuda_peak_bytes"] = torch.cuda.max_memory_allocated() if on_cuda else None
    write_atomic(strip_path, png_bytes(strip), parents=True)  # the image first: the JSON marks the pair finished
    record = {"scene": plan.name, "method": method.name, **results, "costs": costs}
    write_atomic(result_path, json_bytes(record), parents=True)
    return record


def methods_for(plan: Plan, methods: list[Method]) -> list[Method]:
    """The methods a plan runs: all of them, or LONG_METHODS for a long session (24 edits cost a lot)."""
    return [m for m in methods if runs_on(plan.meta, m.name)]


def run_benchmark(plans: list[Plan], methods: list[Method], config: RunConfig, out: Path, *, device=None,
                  state=None) -> list[dict]:
    """Run every (plan, available method) pair not finished yet; this process's share of the plans.

    `state` is accelerate's PartialState (one process unless started by `accelerate launch`): plans
    are split between processes, each writes its own scene files and shard; the caller merges after
    `state.wait_for_everyone()`. Returns this process's failed pairs.
    """
    state = state or PartialState()
    out = Path(out)
    # 1. Every process checks the folder before the main process records this run in it
    check_run_config(out, config)

    # 2. One model per process, shared by every fresh Session; it decides what it can run
    pipeline = Session.from_pretrained(config.model, device=device).pipeline
    pipeline.set_progress_bar_config(disable=True)
    methods = [check_model(method, pipeline) for method in methods]
    state.wait_for_everyone()
    if state.is_main_process:
        run = {"config": config.to_dict(), "plans": [plan.to_dict() for plan in plans],
               "methods": [{"name": m.name, "bundle": m.bundle, "settings": m.settings, "reason": m.reason}
                           for m in methods]}
        write_atomic(out / "run.json", json_bytes(run), parents=True)
        for stale in (out / "shards").glob("process-*.json"):  # from an earlier run, maybe with more processes
            stale.unlink()
    state.wait_for_everyone()

    # 3. This process's scenes
    available = [m for m in methods if m.available]
    with state.split_between_processes(plans) as mine:
        todo = [(plan, m) for plan in mine for m in methods_for(plan, available)
                if not is_finished(out, plan.name, m.name)]
    failures, ran, started = [], 0, time.perf_counter()
    clip = metrics.ClipCropScore(config.clip, device=str(pipeline.device)) if config.clip and todo else None
    rank = state.process_index
    for plan, method in tqdm(todo, desc=f"bench [process {rank}]", position=rank, unit="run"):
        record = run_pair(pipeline, config.model, plan, method, clip, out)
        ran += 1
        if record["status"] != "ok":
            failures.append(record)

    # 4. This process's shard of run-level costs
    shard = {"process": state.process_index, "processes": state.num_processes, "pairs_run": ran,
             "seconds": time.perf_counter() - started, "peak_rss_bytes": metrics.peak_rss_bytes()}
    write_atomic(out / "shards" / f"process-{state.process_index}.json", json_bytes(shard), parents=True)
    return failures
