"""What MQD costs: per-edit time with fused MQD, plain cross-attention, and the per-region-loop reference.

    python -m benchmark.mqd_speed [--model embedded|FOLDER] [--repeats 15] [--steps 20]
    python -m benchmark.mqd_speed --layers 24      # edit 24 / edit 1 as layers pile up

All variants are measured in one run, interleaved (each round times every variant once, in rotating
order), so machine noise hits them alike. Default: one session with 3 earlier object layers; prints
medians and the ratios to plain cross-attention (goal: fused MQD overhead <= 5%). With --layers N:
the first long-session plan's edits build a session of N - 1 edits, and edit N is timed against
edit 1 (an edit on the bare background) for plain attention, fused MQD (queries bucketed by region),
and MQD as one masked attention over every region's tokens (what it did before); goal: MQD edit N /
edit 1 <= 1.1.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import torch.nn.functional as F

from benchmark.plans import long_shapes_plans, pixel_box
from editor import Session
from pipelines.attention import RegionalAttnProcessor, RegionLoopAttnProcessor

EARLIER = [("a red star", (0.05, 0.05, 0.45, 0.45)), ("a blue circle", (0.5, 0.1, 0.95, 0.5)),
           ("a white moon", (0.1, 0.55, 0.5, 0.95))]
TIMED = ("a yellow heart", (0.35, 0.35, 0.85, 0.85))
VARIANTS = {  # name -> (attention setting, processor class)
    "plain cross-attention": ("bcg", RegionalAttnProcessor),
    "MQD fused (ours)": ("mqd", RegionalAttnProcessor),
    "MQD per-region loop": ("mqd", RegionLoopAttnProcessor),
}


class MaskedAllRegions(RegionalAttnProcessor):
    """MQD as one attention over every region's tokens with a region mask (before queries were bucketed)."""

    def attend(self, query, key, value):
        allowed = self.maps.allowed(query.shape[2], query.device)
        return F.scaled_dot_product_attention(query, key, value, attn_mask=allowed)


DEPTH_VARIANTS = {  # name -> (attention setting, processor class)
    "plain cross-attention": ("bcg", RegionalAttnProcessor),
    "MQD fused (ours)": ("mqd", RegionalAttnProcessor),
    "MQD, one masked call (before)": ("mqd", MaskedAllRegions),
}


def depth_study(model: str, device, steps: int, layers: int, repeats: int) -> None:
    """Edit `layers` vs edit 1 of the first long-session plan, interleaved, per variant."""
    plan = long_shapes_plans(0, 1, n_edits=layers)[0]
    shallow = Session.from_pretrained(model, device=device, num_inference_steps=steps)
    shallow.pipeline.set_progress_bar_config(disable=True)
    deep = Session(shallow.pipeline, model=model, defaults=shallow.defaults)
    for session in (shallow, deep):
        session.generate(plan.background, seed=plan.seed)
    for edit in plan.edits[:-1]:
        deep.edit(edit.prompt, pixel_box(edit.box, deep.size))
    first, last = plan.edits[0], plan.edits[-1]
    timed = {"edit 1": (shallow, first), f"edit {layers}": (deep, last)}

    def run(name, variant):
        session, edit = timed[name]
        attention, processor = DEPTH_VARIANTS[variant]
        session.pipeline.region_processor = processor
        started = time.perf_counter()
        session.edit(edit.prompt, pixel_box(edit.box, session.size), attention=attention)
        elapsed = time.perf_counter() - started
        session.undo()
        return elapsed

    cases = [(name, variant) for variant in DEPTH_VARIANTS for name in timed]
    for case in cases:  # warm-up
        run(*case)
    times = {case: [] for case in cases}
    for round_index in range(repeats):
        shift = round_index % len(cases)
        for case in cases[shift:] + cases[:shift]:
            times[case].append(run(*case))
    shallow.pipeline.region_processor = RegionalAttnProcessor
    print(f"model {model}, {steps} steps, image {deep.size[0]}x{deep.size[1]}, {layers} layers, {repeats} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'variant':<34}{'edit 1 s':>10}{f'edit {layers} s':>11}{'ratio':>8}")
    for variant in DEPTH_VARIANTS:
        one, many = (statistics.median(times[(name, variant)]) for name in timed)
        print(f"{variant:<34}{one:>10.4f}{many:>11.4f}{many / one:>8.3f}")


def time_edit(session: Session, attention: str, processor) -> float:
    session.pipeline.region_processor = processor
    started = time.perf_counter()
    session.edit(TIMED[0], pixel_box(TIMED[1], session.size), attention=attention)
    elapsed = time.perf_counter() - started
    session.undo()
    return elapsed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device")
    parser.add_argument("--layers", type=int, help="time edit LAYERS against edit 1 (e.g. 24) instead")
    args = parser.parse_args(argv)
    if args.layers is not None:
        if args.layers < 2:
            raise SystemExit("--layers must be at least 2")
        depth_study(args.model, args.device, args.steps, args.layers, args.repeats)
        return

    session = Session.from_pretrained(args.model, device=args.device, num_inference_steps=args.steps)
    session.pipeline.set_progress_bar_config(disable=True)
    session.generate("a grass background", seed=1)
    for prompt, box in EARLIER:
        session.edit(prompt, pixel_box(box, session.size))
    names = list(VARIANTS)
    for name in names:  # warm-up
        time_edit(session, *VARIANTS[name])
    times = {name: [] for name in names}
    for round_index in range(args.repeats):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            times[name].append(time_edit(session, *VARIANTS[name]))
    session.pipeline.region_processor = RegionalAttnProcessor

    plain = statistics.median(times["plain cross-attention"])
    print(f"model {args.model}, {args.steps} steps, image {session.size[0]}x{session.size[1]}, "
          f"{len(EARLIER) + 2} regions, {args.repeats} rounds, torch threads {torch.get_num_threads()}")
    print(f"{'variant':<24}{'median s/edit':>15}{'vs plain':>10}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:<24}{median:>15.4f}{median / plain:>10.3f}")
    fused, loop = statistics.median(times["MQD fused (ours)"]), statistics.median(times["MQD per-region loop"])
    print(f"fused MQD overhead vs plain: {100 * (fused / plain - 1):+.1f}%  (goal <= +5%)")
    print(f"per-region loop / fused: {loop / fused:.3f}")


if __name__ == "__main__":
    main()
