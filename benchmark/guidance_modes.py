"""CFG vs distilled guidance vs fast mode: quality, fidelity and speed of the guidance adapters, from one run.

    python -m benchmark.guidance_modes [--model embedded|FOLDER] [--plans 80] [--workers 2] [--repeats 8]
                                       [--steps 20] [--big-unet] [--json OUT.json]

Prints, for one model (the embedded one by default, with its `guidance/` and `fast/` adapters):
- task quality, paired: every held-out masked edit of `--plans` shapes-world plans is painted by each mode on the
  same base stack (the CFG layers below it, same seed), and judged by the analytic detector: colour + shape
  found inside the box, and colour in the box. Rates with 95% intervals (plans resampled), the paired
  difference to CFG with its interval, and an exact McNemar test;
- same-seed PSNR of each mode's edited region vs CFG's;
- the student's per-step error by timestep in x0 (the clean latent each step predicts: where the first,
  high-noise steps decide the layout) at s = 2, 4, 7.5: distilled at each of the 20 steps of the teacher's CFG
  run, fast at the start of each of its segments;
- latency, in interleaved rounds of one run: median edit seconds per mode, distilled/CFG against the bare UNet
  call ratio batch 1 / batch 2 measured in the same rounds (the floor at equal steps), fast/CFG-20;
- with --big-unet: the per-step cost of distilled vs CFG on an SD-1.5-sized UNet (random weights, 512 px, a
  rank-64 guidance adapter with a guidance head), interleaved.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmark import metrics, stats
from benchmark.plans import pixel_box, shapes_plan
from editor import Session
from pipelines.guidance_format import as_x0
from pipelines.schedulers import make_scheduler

MODES = ("cfg", "distilled", "fast")
SCALES = (2.0, 4.0, 7.5)
ERROR_PROMPTS = 4  # prompts per scale for the per-step error
EARLIER = [("a red star", (0.05, 0.05, 0.45, 0.45)), ("a blue circle", (0.5, 0.1, 0.95, 0.5))]
TIMED = ("a yellow heart", (0.35, 0.35, 0.85, 0.85))
GENERIC_PROMPTS = ["a photo of a cat", "a red car on a street", "a bowl of fruit on a table", "a mountain lake"]
GOALS = {"distilled_success": 3.0, "distilled_colour": 2.0, "fast_success": 5.0, "ratio_gap": 0.05,
         "fast_ratio": 0.2, "big_unet_ratio": 0.55}


def load_session(model: str, steps: int = 20) -> Session:
    session = Session.from_pretrained(model, num_inference_steps=steps)
    session.pipeline.set_progress_bar_config(disable=True)
    return session


def available_modes(pipeline) -> list[str]:
    return ["cfg"] + (["distilled"] if pipeline.has_guidance_adapter else []) + (
        ["fast"] if pipeline.fast_adapter is not None else [])


# ----------------------------------------------------------------------------------------------- quality
def paint_plan(session: Session, plan, modes: list[str], setups: dict | None = None) -> list[dict]:
    """Each edit of `plan` by every mode on the same base stack (the CFG edits below it). One row per edit.
    `setups` maps a variant name used in `modes` to a function that prepares the pipeline for it and returns the
    guidance mode it runs (benchmark.adapter_rank: one adapter cut to several ranks)."""
    import warnings

    rows = []
    session.generate(plan.background, seed=plan.seed)
    for index, edit in enumerate(plan.edits):
        box = pixel_box(edit.box, session.size)
        region = np.zeros(session.size[::-1], dtype=bool)
        region[box[1]:box[3], box[0]:box[2]] = True
        images = {}
        for mode in modes[::-1]:  # CFG last: its layer stays as the base of the next edit
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "nothing drawn" is counted by the detector
                session.edit(edit.prompt, box, guidance=setups[mode]() if setups and mode in setups else mode)
            images[mode] = np.asarray(session.image).copy()
            if mode != "cfg":
                session.undo()
        row = {"plan": plan.name, "edit": index, "held_out": edit.held_out,
               "background": plan.meta.get("background_name")}
        for mode, image in images.items():
            verdict = metrics.detection(image, region, edit.colour, edit.shape)
            row[mode] = {"success": bool(verdict["shape_found"]), "colour": bool(verdict["colour_found"]),
                         "psnr_vs_cfg": stats.cap_psnr(metrics.psnr(image, images["cfg"], region))}
        rows.append(row)
    return rows


def _paint_plans(job) -> list[dict]:
    model, steps, indices, seed, threads = job
    torch.set_num_threads(threads)
    session = load_session(model, steps)
    modes = available_modes(session.pipeline)
    return [row for index in indices for row in paint_plan(session, shapes_plan(seed, index), modes)]


def quality(model: str, steps: int, n_plans: int, seed: int, workers: int) -> list[dict]:
    """Rows of paint_plan over `n_plans` plans, split over `workers` processes."""
    jobs = [(model, steps, list(range(k, n_plans, workers)), seed, 1) for k in range(workers)]
    if workers == 1:
        return _paint_plans(jobs[0])
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return [row for part in pool.map(_paint_plans, jobs) for row in part]


def summarise_quality(rows: list[dict], modes: list[str]) -> dict:
    rows = [row for row in rows if row["held_out"]]
    summary = {"edits": len(rows), "plans": len({row["plan"] for row in rows})}
    for key in ("success", "colour"):
        for mode in modes:
            by_plan: dict[str, list[float]] = {}
            for row in rows:
                by_plan.setdefault(row["plan"], []).append(float(row[mode][key]))
            summary[f"{mode}_{key}"] = stats.estimate(by_plan)
        for mode in modes[1:]:
            pairs: dict[str, list[tuple[float, float]]] = {}
            for row in rows:
                pairs.setdefault(row["plan"], []).append((float(row[mode][key]), float(row["cfg"][key])))
            difference = stats.paired_difference(pairs)
            difference["mcnemar"] = stats.mcnemar([(bool(a), bool(b)) for v in pairs.values() for a, b in v])
            summary[f"{mode}_minus_cfg_{key}"] = difference
    for mode in modes[1:]:
        values = [row[mode]["psnr_vs_cfg"] for row in rows if row[mode]["psnr_vs_cfg"] is not None]
        summary[f"{mode}_psnr_vs_cfg_db"] = round(float(np.median(values)), 2) if values else None
    # Where the students' misses are: counts per scene background (a gap on one background points at the data).
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row.get("background") or "?", []).append(row)
    summary["by_background"] = {
        background: {"edits": len(group), **{f"{mode}_{key}": sum(bool(row[mode][key]) for row in group)
                                             for mode in modes for key in ("success", "colour")}}
        for background, group in sorted(groups.items())}
    return summary


# ----------------------------------------------------------------------------------------------- per-step error
def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-8)).mean())


@torch.no_grad()
def teacher_run(pipeline, prompts: list[str], scale: float, steps: int, trailing: bool = False):
    """The teacher's CFG DDIM run: yields (t, model input, guided output); the guided output advances it."""
    unet = pipeline.unet
    sampler = make_scheduler("ddim", pipeline.scheduler.config, **({"timestep_spacing": "trailing"} if trailing else {}))
    sampler.set_timesteps(steps)
    cond = torch.cat([pipeline.encode_prompt(p).embeds for p in prompts])
    uncond = pipeline.encode_prompt("").embeds.expand_as(cond)
    width, height = pipeline.default_size
    latents = torch.cat([pipeline.initial_noise(i, height, width) for i in range(len(prompts))]) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        model_input = sampler.scale_model_input(latents, t)
        uncond_out, cond_out = unet(torch.cat([model_input] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])
                                    ).sample.float().chunk(2)
        guided = uncond_out + scale * (cond_out - uncond_out)
        yield int(t), model_input, guided, cond
        latents = sampler.step(guided.to(unet.dtype), t, latents).prev_sample
    yield -1, latents, None, cond


@torch.no_grad()
def student(adapter, pipeline, model_input, t, cond, scale):
    with adapter.applied(scale):
        return pipeline.unet(model_input, t, encoder_hidden_states=cond,
                             timestep_cond=adapter.embedding(scale, model_input.shape[0], model_input.device,
                                                             model_input.dtype)).sample.float()


def distilled_x0_errors(pipeline, prompts: list[str], scale: float, steps: int) -> list[float]:
    """x0 relative error of the distilled student at each state of the teacher's CFG run, high noise first."""
    alphas, kind = pipeline.scheduler.alphas_cumprod, pipeline.scheduler.config.prediction_type
    errors = []
    for t, model_input, guided, cond in teacher_run(pipeline, prompts, scale, steps):
        if guided is None:
            break
        out = student(pipeline.guidance_adapter, pipeline, model_input, t, cond, scale)
        errors.append(relative(as_x0(out, model_input, alphas[t], kind), as_x0(guided, model_input, alphas[t], kind)))
    return errors


def fast_x0_errors(pipeline, prompts: list[str], scale: float) -> list[float]:
    """x0 relative error of the fast student at the start of each of its segments of the teacher's run, against
    the x0 that one DDIM step needs to land where the teacher lands at the segment's end."""
    from training.distill.rollouts import output_reaching

    adapter = pipeline.fast_adapter
    fast_steps, teacher_steps = adapter.sample_steps, int(adapter.meta.get("teacher_steps") or 20)
    scheduler = make_scheduler("ddim", pipeline.scheduler.config)
    alphas, kind = scheduler.alphas_cumprod, pipeline.scheduler.config.prediction_type
    run = list(teacher_run(pipeline, prompts, scale, teacher_steps, trailing=True))
    length, span = teacher_steps // fast_steps, pipeline.scheduler.config.num_train_timesteps // fast_steps
    errors = []
    for k in range(fast_steps):
        t, model_input, _, cond = run[k * length]
        end = run[(k + 1) * length][1]
        target = output_reaching(end.float(), model_input.float(), t, t - span, alphas, scheduler.final_alpha_cumprod,
                                 kind)
        out = student(adapter, pipeline, model_input, t, cond, scale)
        errors.append(relative(as_x0(out, model_input, alphas[t], kind), as_x0(target, model_input, alphas[t], kind)))
    return errors


def error_prompts(embedded: bool, count: int) -> list[str]:
    if not embedded:
        return GENERIC_PROMPTS[:count]
    from benchmark import shapes_world as sw

    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(count):
        scene = sw.sample_scene(rng, n_objects=(0, 2), split="heldout")
        prompts.append(scene.caption if len(prompts) % 2 == 0 or not scene.objects
                       else sw.object_prompt(scene.objects[0].colour, scene.objects[0].shape))
    return prompts


# ----------------------------------------------------------------------------------------------- latency
def timed_edit(session: Session, mode: str) -> tuple[float, int]:
    started = time.perf_counter()
    session.edit(TIMED[0], pixel_box(TIMED[1], session.size), guidance=mode)
    elapsed = time.perf_counter() - started
    evals = session.layers[-1].info["unet_evals"]
    session.undo()
    return elapsed, evals


@torch.no_grad()
def bare_call(pipeline, batch: int) -> float:
    width, height = pipeline.default_size
    latent = pipeline.initial_noise(0, height, width).expand(batch, -1, -1, -1)
    text = pipeline.encode_prompt("").embeds.expand(batch, -1, -1)
    started = time.perf_counter()
    pipeline.unet(latent, 500, encoder_hidden_states=text)
    return time.perf_counter() - started


def latency(session: Session, modes: list[str], repeats: int) -> dict:
    """Median edit seconds per mode and the bare batch-1 / batch-2 UNet call, all in the same interleaved rounds
    (the order turns every round), so load on the machine falls on every mode alike."""
    session.generate("a grass background", seed=1)
    for prompt, box in EARLIER:
        session.edit(prompt, pixel_box(box, session.size))
    for mode in modes:  # warm-up
        timed_edit(session, mode)
    tasks = [(mode, lambda m=mode: timed_edit(session, m)) for mode in modes]
    tasks += [(f"unet_batch{b}", lambda b=b: (statistics.median(bare_call(session.pipeline, b) for _ in range(5)), 0))
              for b in (1, 2)]
    times: dict[str, list[float]] = {name: [] for name, _ in tasks}
    evals = {}
    for round_index in range(repeats):
        shift = round_index % len(tasks)
        for name, task in tasks[shift:] + tasks[:shift]:
            seconds, evals[name] = task()
            times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {"median_seconds": median, "unet_evals_per_edit": {m: evals[m] for m in modes},
              "unet_call_ratio": median["unet_batch1"] / median["unet_batch2"]}
    for mode in modes[1:]:
        result[f"{mode}_over_cfg"] = median[mode] / median["cfg"]
    return result


# ----------------------------------------------------------------------------------------------- SD-1.5 size
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


@torch.no_grad()
def big_unet_step_ratio(rounds: int) -> dict:
    """Per-step seconds of CFG (batch 2 + the CFG combination) vs distilled (batch 1 with a fused rank-64 adapter
    and a guidance head) on an SD-1.5-sized UNet with random weights at 512 px (64x64 latents), interleaved."""
    import tempfile
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel

    from pipelines.guidance import load_guidance_adapter
    from pipelines.guidance_format import ADAPTER_NAME, add_guidance_projection, make_guidance_head
    from training.distill.adapter import lora_config, save_guidance_adapter

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    add_guidance_projection(unet)
    unet.add_adapter(lora_config(64), adapter_name=ADAPTER_NAME)
    unet.guidance_head = make_guidance_head(unet)
    with tempfile.TemporaryDirectory() as folder:
        save_guidance_adapter(unet, Path(folder) / "guidance", lora_gain="one")
        del unet.guidance_head
        unet.unload_lora()
        pipeline = SimpleNamespace(family=SimpleNamespace(name="sd"), denoiser=unet, adapters={})
        adapter = load_guidance_adapter(pipeline, Path(folder) / "guidance")
    latent = torch.randn(1, 4, 64, 64)
    text = torch.randn(1, 77, 768)
    scale, t = 7.5, 500

    def cfg_step():
        uncond, cond = unet(torch.cat([latent] * 2), t, encoder_hidden_states=torch.cat([text] * 2)).sample.chunk(2)
        return uncond + scale * (cond - uncond)

    def distilled_step():
        return unet(latent, t, encoder_hidden_states=text,
                    timestep_cond=adapter.embedding(scale, 1, latent.device, latent.dtype)).sample

    started = time.perf_counter()
    with adapter.applied(scale):  # once per edit: W + g delta is fused in, the weights back afterwards
        fuse_seconds = time.perf_counter() - started
        distilled_step()  # warm-up
        cfg_step()
        times = {"cfg": [], "distilled": []}
        for round_index in range(rounds):
            for name in ("cfg", "distilled") if round_index % 2 == 0 else ("distilled", "cfg"):
                started = time.perf_counter()
                cfg_step() if name == "cfg" else distilled_step()
                times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"step_seconds": median, "ratio": median["distilled"] / median["cfg"], "adapter_fuse_seconds": fuse_seconds,
            "rounds": rounds}


# ----------------------------------------------------------------------------------------------- report
def fmt_rate(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['value']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def fmt_difference(entry: dict) -> str:
    low, high = entry["ci95"]
    test = entry["mcnemar"]
    return (f"{100 * entry['value']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], McNemar p={test['p']:.3g} "
            f"({test['a_only']} vs {test['b_only']} discordant)")


def report(result: dict, modes: list[str]) -> None:
    q = result["quality"]
    print(f"model {result['model']}; modes {', '.join(modes)}; torch threads {result['torch_threads']}")
    print(f"\nTask quality, paired: {q['edits']} held-out masked edits of {q['plans']} plans, same base stacks and "
          "seeds (95% intervals resample plans):")
    for mode in modes:
        print(f"  {mode:9s} colour + shape {fmt_rate(q[f'{mode}_success'])}   colour in box {fmt_rate(q[f'{mode}_colour'])}")
    for mode in modes[1:]:
        goal_success = GOALS[f"{mode}_success"]
        line = f"  {mode} - CFG: colour + shape {fmt_difference(q[f'{mode}_minus_cfg_success'])} (goal >= -{goal_success:g})"
        if mode == "distilled":
            line += f"; colour {fmt_difference(q['distilled_minus_cfg_colour'])} (goal >= -{GOALS['distilled_colour']:g})"
        print(line)
        print(f"  {mode} same-seed PSNR vs CFG on the edited region, median: {q[f'{mode}_psnr_vs_cfg_db']} dB")
    print("  by background, edits found (colour + shape / colour in box): "
          + "; ".join(f"{background} ({counts['edits']}) " + ", ".join(
              f"{mode} {counts[f'{mode}_success']}/{counts[f'{mode}_colour']}" for mode in modes)
              for background, counts in q["by_background"].items()))
    for mode in modes[1:]:
        print(f"\nPer-step x0 relative error of {mode} vs the CFG teacher, high noise first:")
        for scale, errors in result["x0_errors"][mode].items():
            print(f"  {scale}: mean {np.mean(errors):.3f}  [{' '.join(f'{e:.2f}' for e in errors)}]")
    lat = result["latency"]
    median = lat["median_seconds"]
    print(f"\nLatency, {result['repeats']} interleaved rounds (median seconds per edit):")
    for mode in modes:
        print(f"  {mode:9s} {median[mode]:.4f} s, {lat['unet_evals_per_edit'][mode]} UNet evaluations")
    floor = lat["unet_call_ratio"]
    print(f"  bare UNet call batch 1 / batch 2: {median['unet_batch1'] * 1e3:.2f} / {median['unet_batch2'] * 1e3:.2f} ms "
          f"= {floor:.3f} (the floor at equal steps)")
    if "distilled" in modes:
        gap = lat["distilled_over_cfg"] - floor
        print(f"  distilled / CFG edit: {lat['distilled_over_cfg']:.3f}, {gap:+.3f} from the floor "
              f"(goal within {GOALS['ratio_gap']:g})")
    if "fast" in modes:
        print(f"  fast / CFG-20 edit: {lat['fast_over_cfg']:.3f} (goal <= {GOALS['fast_ratio']:g})")
    if "big_unet" in result:
        big = result["big_unet"]
        print(f"\nSD-1.5-sized UNet, random weights, 512 px, {big['rounds']} interleaved rounds: per step CFG "
              f"{big['step_seconds']['cfg']:.2f} s, distilled {big['step_seconds']['distilled']:.2f} s, ratio "
              f"{big['ratio']:.3f} (goal <= {GOALS['big_unet_ratio']:g}); fusing the adapter once per edit "
              f"{big['adapter_fuse_seconds']:.2f} s")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--plans", type=int, default=80, help="shapes-world plans for task quality (default 80: "
                        "~350 held-out edits)")
    parser.add_argument("--steps", type=int, default=20, help="CFG and distilled steps (fast runs its adapter's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes for the quality part (default 2)")
    parser.add_argument("--repeats", type=int, default=8, help="latency rounds (default %(default)s)")
    parser.add_argument("--big-unet", action="store_true", help="also time an SD-1.5-sized UNet at 512 px")
    parser.add_argument("--big-rounds", type=int, default=3)
    parser.add_argument("--shapes-world", action="store_true", help="shapes-world prompts for the per-step error "
                        "(automatic for the embedded model)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the timing parts")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    session = load_session(args.model, args.steps)
    pipeline = session.pipeline
    modes = available_modes(pipeline)
    if len(modes) == 1:
        raise SystemExit(f"{args.model} has neither a guidance nor a fast adapter; train one with "
                         "`python -m training distill [--mode fast]`")
    result = {"model": args.model, "modes": modes, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "adapters": {mode: pipeline.adapters[mode].meta.get("steps") for mode in modes[1:]}}
    result["latency"] = latency(session, modes, args.repeats)
    if args.big_unet:
        result["big_unet"] = big_unet_step_ratio(args.big_rounds)
    prompts = error_prompts(args.model in (None, "embedded") or args.shapes_world, ERROR_PROMPTS)
    result["x0_errors"] = {}
    if "distilled" in modes:
        result["x0_errors"]["distilled"] = {f"s={s:g}": distilled_x0_errors(pipeline, prompts, s, args.steps)
                                            for s in SCALES}
    if "fast" in modes:
        result["x0_errors"]["fast"] = {f"s={s:g}": fast_x0_errors(pipeline, prompts, s) for s in SCALES}
    rows = quality(args.model, args.steps, args.plans, args.seed, args.workers)
    result["quality"] = summarise_quality(rows, modes)
    report(result, modes)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**result, "rows": rows}, indent=1))
    return result


if __name__ == "__main__":
    main()
