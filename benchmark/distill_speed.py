"""What distilled guidance saves and what it costs: CFG vs the guidance adapter, in one run on one model.

    python -m benchmark.distill_speed [--model embedded|FOLDER] [--adapter FOLDER] [--repeats 10]
                                      [--steps 20] [--plans 8] [--json OUT.json]

Prints, for the same sessions and seeds:
- UNet evaluations per edit (CFG: 2 per step; distilled: 1);
- median edit latency distilled / CFG, edits interleaved round by round (goal <= 0.55), and the same ratio
  for one bare UNet call (batch 1 vs CFG's batch 2): the floor the edit ratio cannot go below at equal steps;
- per-step relative error ||eps_student - eps_cfg|| / ||eps_cfg||, averaged over the steps of the teacher's
  CFG sampling runs, at s = 2, 4, 7.5 (goal <= 0.15); for v-prediction models eps is derived from v and the
  latent, and the same error of the raw v output is printed too;
- same-seed PSNR vs CFG: backgrounds, and the edited region of masked edits on a CFG background;
- detector success (shapes world) of the same masked edits with CFG and with the adapter: the requested
  colour inside the box, and colour + shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmark import metrics
from benchmark import shapes_world as sw
from benchmark.plans import pixel_box, shapes_plan
from editor import Session
from pipelines.guidance_format import as_epsilon

SCALES = (2.0, 4.0, 7.5)
ERROR_PROMPTS = 4  # prompts per scale for the per-step error
EARLIER = [("a red star", (0.05, 0.05, 0.45, 0.45)), ("a blue circle", (0.5, 0.1, 0.95, 0.5))]
TIMED = ("a yellow heart", (0.35, 0.35, 0.85, 0.85))
GENERIC_PROMPTS = ["a photo of a cat", "a red car on a street", "a bowl of fruit on a table", "a mountain lake"]


# ----------------------------------------------------------------------------------------------- cost
def timed_edit(session: Session, guidance: str) -> tuple[float, int]:
    started = time.perf_counter()
    session.edit(TIMED[0], pixel_box(TIMED[1], session.size), guidance=guidance)
    elapsed = time.perf_counter() - started
    evals = session.layers[-1].info["unet_evals"]
    session.undo()
    return elapsed, evals


def cost(session: Session, repeats: int) -> dict:
    """UNet evaluations and median latency per edit, CFG vs distilled, interleaved (order alternates)."""
    session.generate("a grass background", seed=1)
    for prompt, box in EARLIER:
        session.edit(prompt, pixel_box(box, session.size))
    modes = ["cfg", "distilled"]
    for mode in modes:  # warm-up
        timed_edit(session, mode)
    times, evals = {m: [] for m in modes}, {}
    for round_index in range(repeats):
        for mode in modes if round_index % 2 == 0 else modes[::-1]:
            seconds, evals[mode] = timed_edit(session, mode)
            times[mode].append(seconds)
    median = {m: statistics.median(times[m]) for m in modes}
    return {"unet_evals_per_edit": evals, "median_edit_seconds": median,
            "latency_ratio": median["distilled"] / median["cfg"]}


@torch.no_grad()
def unet_call_cost(pipeline, repeats: int) -> dict:
    """Median seconds of one bare UNet call at batch 1 (distilled) and batch 2 (CFG's cond + uncond), at the
    pipeline's latent size with one prompt's tokens and the default attention, interleaved. On a small UNet per-call overhead makes batch 2 cost far
    less than twice batch 1, which bounds the edit latency ratio from below."""
    unet = pipeline.unet
    width, height = pipeline.default_size
    latent = pipeline.initial_noise(0, height, width)
    text = pipeline.encode_prompt("").embeds
    t = pipeline.scheduler.config.num_train_timesteps // 2  # cost does not depend on t
    times = {1: [], 2: []}
    for round_index in range(3 + repeats * 5):
        for batch in (1, 2) if round_index % 2 == 0 else (2, 1):
            started = time.perf_counter()
            unet(latent.expand(batch, -1, -1, -1), t, encoder_hidden_states=text.expand(batch, -1, -1))
            if round_index >= 3:  # warm-up rounds are not timed
                times[batch].append(time.perf_counter() - started)
    median = {batch: statistics.median(values) for batch, values in times.items()}
    return {"unet_call_seconds": {"batch1": median[1], "batch2": median[2]},
            "unet_call_ratio": median[1] / median[2]}


# ----------------------------------------------------------------------------------------------- per-step error
@torch.no_grad()
def per_step_relative_error(pipeline, prompts: list[str], scale: float, steps: int, seed: int = 0) -> dict:
    """Relative error of the student vs CFG at every state of the teacher's CFG sampling run, per step:
    {"eps": [...], "output": [...]} (the same list twice for epsilon models).

    The one place here that calls the UNet directly: a Session has no way to evaluate both at the
    same latent. Batch = the prompts; the teacher's guided output advances the run.
    """
    from pipelines.schedulers import make_scheduler

    adapter, unet = pipeline.guidance_adapter, pipeline.unet
    device, dtype = unet.device, unet.dtype
    sampler = make_scheduler("ddim", pipeline.scheduler.config)
    sampler.set_timesteps(steps, device=device)
    cond = torch.cat([pipeline.encode_prompt(p).embeds for p in prompts])
    uncond = pipeline.encode_prompt("").embeds.expand_as(cond)
    width, height = pipeline.default_size
    latents = torch.cat([pipeline.initial_noise(seed + i, height, width) for i in range(len(prompts))])
    latents = latents * sampler.init_noise_sigma
    errors = {"eps": [], "output": []}
    prediction = sampler.config.prediction_type

    def relative(a, b):
        return float(((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-8)).mean())

    for t in sampler.timesteps:
        model_input = sampler.scale_model_input(latents, t)
        uncond_out, cond_out = unet(torch.cat([model_input] * 2), t, encoder_hidden_states=torch.cat([uncond, cond])
                                    ).sample.float().chunk(2)
        guided = uncond_out + scale * (cond_out - uncond_out)
        with adapter.applied(scale):
            student = unet(model_input, t, encoder_hidden_states=cond,
                           timestep_cond=adapter.embedding(scale, len(prompts), device, dtype)).sample.float()
        alpha = sampler.alphas_cumprod[int(t)]
        errors["output"].append(relative(student, guided))
        errors["eps"].append(relative(as_epsilon(student, model_input, alpha, prediction),
                                      as_epsilon(guided, model_input, alpha, prediction)))
        latents = sampler.step(guided.to(dtype), t, latents).prev_sample
    return errors


# ----------------------------------------------------------------------------------------------- quality
def quality(session: Session, n_plans: int, seed: int) -> dict:
    """Same-seed PSNR vs CFG and detector success, on shapes-world plans (background + masked edits)."""
    psnr_background, psnr_edit = [], []
    verdicts = {"cfg": [], "distilled": []}
    for index in range(n_plans):
        plan = shapes_plan(seed, index)
        cfg_background = np.asarray(session.generate(plan.background, seed=plan.seed)).copy()
        distilled_background = np.asarray(session.generate(plan.background, seed=plan.seed, guidance="distilled"))
        full = np.ones(cfg_background.shape[:2], dtype=bool)
        psnr_background.append(metrics.psnr(distilled_background, cfg_background, full))
        finals = {}
        for mode in ("cfg", "distilled"):
            session.generate(plan.background, seed=plan.seed)  # both modes edit the CFG background
            for edit in plan.edits:
                box = pixel_box(edit.box, session.size)
                session.edit(edit.prompt, box, guidance=mode)
                region = np.zeros(cfg_background.shape[:2], dtype=bool)
                region[box[1]:box[3], box[0]:box[2]] = True
                image = np.asarray(session.image)
                finals.setdefault(mode, []).append((image, region))
                if edit.colour is not None:
                    verdicts[mode].append(metrics.detection(image, region, edit.colour, edit.shape))
        for (cfg_image, region), (distilled_image, _) in zip(finals["cfg"], finals["distilled"]):
            psnr_edit.append(metrics.psnr(distilled_image, cfg_image, region))
    return {
        "psnr_background_db": _finite_mean(psnr_background),
        "psnr_edit_region_db": _finite_mean(psnr_edit),
        "detector_success": _rates(verdicts, "shape_found"),  # colour and shape
        "detector_colour_in_box": _rates(verdicts, "colour_found"),
        "edits": len(psnr_edit),
    }


def _rates(verdicts: dict[str, list[dict]], key: str) -> dict[str, float | None]:
    return {mode: (float(np.mean([v[key] for v in found])) if found else None) for mode, found in verdicts.items()}


def _finite_mean(values) -> float | None:
    values = [min(v, 100.0) for v in values if v is not None]  # identical images count as 100 dB
    return round(float(np.mean(values)), 2) if values else None


def error_prompts(embedded: bool, count: int) -> list[str]:
    if not embedded:
        return GENERIC_PROMPTS[:count]
    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(count):
        scene = sw.sample_scene(rng, n_objects=(0, 2), split="any")
        prompts.append(scene.caption if len(prompts) % 2 == 0 or not scene.objects
                       else sw.object_prompt(scene.objects[0].colour, scene.objects[0].shape))
    return prompts


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--adapter", default=None, help="guidance adapter folder (default: <model>/guidance)")
    parser.add_argument("--repeats", type=int, default=10, help="timing rounds (default %(default)s)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="for timing and quality (default 7.5)")
    parser.add_argument("--plans", type=int, default=20, help="shapes-world plans for PSNR and detector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes-world", action="store_true",
                        help="shapes-world prompts for the error (automatic for the embedded model; for its copies)")
    parser.add_argument("--device")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)

    session = Session.from_pretrained(args.model, device=args.device, guidance_adapter=args.adapter,
                                      num_inference_steps=args.steps, guidance_scale=args.guidance_scale)
    pipeline = session.pipeline
    if not pipeline.has_guidance_adapter:
        raise SystemExit(f"{args.model} has no guidance adapter; pass --adapter FOLDER or train one with "
                         "`python -m training distill`")
    pipeline.set_progress_bar_config(disable=True)
    embedded = args.model in (None, "embedded") or args.shapes_world
    result = {"model": args.model, "adapter": str(pipeline.guidance_adapter.folder),
              "adapter_steps": pipeline.guidance_adapter.meta.get("steps"), "steps": args.steps,
              "guidance_scale": args.guidance_scale, "torch_threads": torch.get_num_threads(),
              "device": str(pipeline.device)}
    result.update(cost(session, args.repeats))
    result.update(unet_call_cost(pipeline, args.repeats))
    prompts = error_prompts(embedded, ERROR_PROMPTS)
    runs = {s: per_step_relative_error(pipeline, prompts, s, args.steps) for s in SCALES}
    for space, key in (("eps", "relative_error"), ("output", "relative_error_unet_output")):
        result[key] = {f"s={s:g}": round(statistics.mean(run[space]), 4) for s, run in runs.items()}
        result[key]["mean"] = round(statistics.mean(result[key].values()), 4)
    result.update(quality(session, args.plans, args.seed))

    evals = result["unet_evals_per_edit"]
    print(f"model {args.model} ({result['adapter']}, {result['adapter_steps']} training steps), {args.steps} steps, "
          f"s={args.guidance_scale:g}, image {session.size[0]}x{session.size[1]}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"UNet evaluations per edit: CFG {evals['cfg']}, distilled {evals['distilled']} "
          f"(ratio {evals['distilled'] / evals['cfg']:.2f})")
    median = result["median_edit_seconds"]
    print(f"median edit latency: CFG {median['cfg']:.4f} s, distilled {median['distilled']:.4f} s, "
          f"distilled/CFG {result['latency_ratio']:.3f} (goal <= 0.55)")
    call = result["unet_call_seconds"]
    print(f"  one bare UNet call: batch 1 {call['batch1'] * 1e3:.2f} ms, batch 2 (CFG) {call['batch2'] * 1e3:.2f} ms, "
          f"ratio {result['unet_call_ratio']:.3f} (the floor for the edit ratio at equal steps)")
    print(f"per-step relative error vs CFG, eps: {result['relative_error']} (goal <= 0.15)")
    print(f"  same for the raw UNet output ({pipeline.scheduler.config.prediction_type}): "
          f"{result['relative_error_unet_output']}")
    print(f"same-seed PSNR vs CFG: backgrounds {result['psnr_background_db']} dB, edited regions "
          f"{result['psnr_edit_region_db']} dB ({result['edits']} edits)")
    success, colour = result["detector_success"], result["detector_colour_in_box"]
    print(f"detector success of masked edits ({result['edits']}): colour + shape CFG {success['cfg']}, distilled "
          f"{success['distilled']}; colour in box CFG {colour['cfg']}, distilled {colour['distilled']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
