"""What MQD costs: per-edit time with fused MQD, plain cross-attention, and the per-region-loop reference.

    python -m benchmark.mqd_speed [--model embedded|FOLDER] [--repeats 15] [--steps 20]

All three are measured in one run, interleaved (each round times every variant once, in rotating
order) on the same session with 3 earlier object layers, so machine noise hits them alike. Prints
medians and the ratios to plain cross-attention (goal: fused MQD overhead <= 5%).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmark.plans import pixel_box
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
    args = parser.parse_args(argv)

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
