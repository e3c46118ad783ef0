"""The `bench` command: run a suite of sequential-edit plans for each method and write a report.

    layered-edit bench --suite shapes --seeds 3 --long-sessions 3 --out benchmark/results/shapes   # the full run
    layered-edit bench --suite shapes --limit 10 --out bench-out
    python -m benchmark --suite multiedit --methods naive,full --model path/to/sd --clip path/to/clip
    layered-edit bench --suite multiedit --model PixArt-alpha/PixArt-XL-2-1024-MS --preset paper   # the paper's setting
    accelerate launch --multi_gpu --num_processes 2 -m benchmark --suite shapes --out bench-out   # 2 processes
    python -m benchmark --merge-only --out bench-out                                        # rebuild the report
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmark.methods import METHODS
from benchmark.plans import SUITES
from editor.settings import PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--suite", default="shapes",
                        help=f"{', '.join(SUITES)} or a plan .json file (default: shapes). shapes: plans of 3-6 "
                             "detector-checkable edits from seeds; shapes-long: only long sessions (24 edits: "
                             "drift, latency, memory and MQD cost vs the edit index); multiedit: MultiEdit-Bench, "
                             "100 scenes")
    parser.add_argument("--methods", default="all",
                        help=f"comma list of {', '.join(METHODS)} (default: all; those the editor cannot run yet "
                             "are reported as unavailable)")
    parser.add_argument("--out", default="bench-out", help="output folder; a rerun resumes in it (default: bench-out)")
    parser.add_argument("--limit", type=int, help="run only the first N scenes of the suite")
    parser.add_argument("--model", default="embedded", help="'embedded' (default), a diffusers folder or a hub id")
    parser.add_argument("--clip", help="a local CLIP model folder (transformers) for the CLIP crop score")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated plans and sessions (default: 0)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS),
                        help="base settings the methods build on: default, or paper (the official code's: "
                             "DPM-Solver++ 20 steps, CFG 7.5, 20%% free steps, whole-box repaint, binary BCG "
                             "mask, erode-dilate routing)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="session seeds per scene (default: 1); every method runs every scene with each, so "
                             "results pair up edit by edit and intervals resample whole scenes")
    parser.add_argument("--long-sessions", type=int, default=0, metavar="N",
                        help="also run N long sessions of 24 edits (methods naive, bcg, mqd, full) with the shapes "
                             "suite (default: 0)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    parser.add_argument("--device", help="cpu or cuda (default: accelerate's device for this process)")
    parser.add_argument("--merge-only", action="store_true",
                        help="only merge the scene files in --out into results.json and the report")
    parser.set_defaults(handler=run_bench)
    return parser


def add_bench_command(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on a CLI's subparsers (ui/cli.py); its handler is `args.handler(args)`."""
    return add_arguments(subparsers.add_parser(
        "bench", help="benchmark sequential edits: preservation, edit success and cost per method",
        description=__doc__.splitlines()[0]))


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="python -m benchmark", description=__doc__.splitlines()[0]))


def run_bench(args) -> int:
    import torch
    from accelerate import PartialState

    from benchmark import report
    from benchmark.methods import select
    from benchmark.plans import long_shapes_plans, suite_plans, with_seeds
    from benchmark.runner import RunConfig, run_benchmark
    from editor import EditSettings

    out = Path(args.out)
    if args.merge_only:
        return _finish(report.merge(out), out)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of scenes, got {args.limit}")
    if args.seeds < 1 or args.long_sessions < 0:
        raise ValueError(f"--seeds must be >= 1 and --long-sessions >= 0, got {args.seeds} and {args.long_sessions}")
    if args.clip and not Path(args.clip).is_dir():
        raise FileNotFoundError(f"--clip {args.clip}: not a folder holding a CLIP model")
    # cpu=True lets processes started by torchrun (e.g. `accelerate launch --multi_gpu`) on a machine
    # without CUDA join through gloo; accelerate's own `--cpu` launcher starts them only through mpirun.
    state = PartialState(cpu=(args.device or "").startswith("cpu") or not torch.cuda.is_available())
    defaults = EditSettings.preset(args.preset).updated(num_inference_steps=args.steps)
    plans = suite_plans(args.suite, args.seed)[:args.limit] + long_shapes_plans(args.seed, args.long_sessions)
    plans = with_seeds(plans, args.seeds)
    methods = select(args.methods, defaults)
    config = RunConfig(model=args.model, suite=args.suite, steps=defaults.num_inference_steps, seed=args.seed,
                       clip=args.clip, seeds=args.seeds, long_sessions=args.long_sessions, preset=args.preset)
    run_benchmark(plans, methods, config, out, device=args.device or state.device, state=state)
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0
    return _finish(report.merge(out), out)


def _finish(results: dict, out: Path) -> int:
    """Print one line per method; exit status 1 when any (scene, method) pair failed."""
    from benchmark.report import fmt, fmt_ci

    for method, values in results["summary"].items():
        print(f"{method:18s} {values['edits']:4d} edits  background PSNR median "
              f"{fmt(values['background_psnr_median'], 'dB')} dB  edit success {fmt_ci(values['success'], '%')}  "
              f"earlier kept {fmt_ci(values['earlier_kept'], '%')}")
    for failure in results["failed"]:
        print(f"FAILED {failure['scene']}/{failure['method']}: {failure['error']}", file=sys.stderr)
    print(f"wrote {out / 'report.md'} (and results.json, costs.json, contact/, plots/)")
    return 1 if results["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
