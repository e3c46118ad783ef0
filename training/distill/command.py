"""`python -m training distill` (and `layered-edit distill`): load a checkpoint and train its guidance adapter."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pipelines.guidance_format import LORA_GAINS
from pipelines.loading import EMBEDDED_MODEL_DIR, load_pipeline, resolve_model

from .. import configs
from .config import CALL_SAMPLING, DATA_MODES, LOSSES, MODES, DistillConfig, parse_background_weights
from .data import file_prompts, shapes_world_latents, shapes_world_prompts
from .loop import distill


def is_embedded(model: str | None) -> bool:
    return model in (None, "embedded") or Path(model).resolve() == EMBEDDED_MODEL_DIR.resolve()


def distill_model(model: str | None, out: str | Path | None, config: DistillConfig, *, prompts_file=None,
                  shapes_world: bool | None = None, device=None, threads: int | None = None, state_dir=None,
                  progress: bool = True) -> dict:
    """Load a checkpoint (the embedded model by default) and train its guidance adapter into `out`.

    `shapes_world`: shapes-world prompts and images (None: when the model is the embedded one).
    """
    configs.set_threads(threads)
    if device is None:
        device = configs.device()
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    embedded = is_embedded(model)
    shapes_world = embedded if shapes_world is None else shapes_world
    if out is None:
        if not embedded:
            raise ValueError("--out is required for a model other than the embedded one")
        out = EMBEDDED_MODEL_DIR / ("fast" if config.mode == "fast" else "guidance")
    if prompts_file is not None:
        prompts = file_prompts(prompts_file)
    elif shapes_world:
        prompts = shapes_world_prompts
    else:
        raise ValueError("pass --prompts FILE (one prompt per line) to distill a model other than the embedded one")
    pipeline = load_pipeline(model, device=device, dtype=torch.float32, guidance_adapter=False)
    pipeline.set_progress_bar_config(disable=True)
    clean = None
    if shapes_world and config.data in ("noised", "mixed"):
        clean = shapes_world_latents(pipeline, np.random.default_rng(config.seed + 7))
    name = "embedded" if embedded else str(model)
    if Path(resolve_model(model)).is_dir() and not embedded:
        name = str(Path(resolve_model(model)).resolve())
    return distill(pipeline, out, config, prompts, clean=clean, base_model=name, state_dir=state_dir, progress=progress,
                   shapes_world=shapes_world)


def background_weights_argument(text: str) -> tuple[tuple[str, float], ...]:
    try:
        return parse_background_weights(text)
    except ValueError as error:  # argparse shows an ArgumentTypeError's own words
        raise argparse.ArgumentTypeError(str(error)) from None


def add_distill_command(subparsers) -> argparse.ArgumentParser:
    """Add `distill` to an argparse subparsers object; the parsed args carry `handler` (returns 0)."""
    from training import distill as distill_package  # its docstring describes the method: the command's help

    defaults = DistillConfig()
    parser = subparsers.add_parser(
        "distill", help="train a guidance adapter: one UNet pass per step instead of CFG's two",
        description=distill_package.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default=defaults.mode,
                        help="guidance: one pass per step reproduces CFG (guidance='distilled', default); fast: a "
                             "few-step student of the CFG sampler (guidance='fast')")
    parser.add_argument("--model", default="embedded", help="'embedded' (default), a diffusers folder or a hub id")
    parser.add_argument("--out", default=None,
                        help="adapter folder (default for the embedded model: assets/embedded/guidance, or "
                             "assets/embedded/fast with --mode fast; put it in <model folder>/guidance or /fast to "
                             "have it loaded with the model)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"total steps to reach, counting earlier runs (default {defaults.steps} unless --minutes)")
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock budget of this run")
    parser.add_argument("--rank", type=int, default=defaults.rank, help="LoRA rank (default %(default)s)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--targets", default=",".join(defaults.targets),
                        help="comma list of module names to adapt (default %(default)s, LCM-LoRA's set; "
                             "to_q,to_k,to_v,to_out.0 adapts attention only)")
    parser.add_argument("--data", choices=DATA_MODES, default=defaults.data,
                        help="training states (see above; --mode fast trains on edits only); default %(default)s")
    parser.add_argument("--prompts", default=None, help="text file, one prompt per line (required unless embedded)")
    parser.add_argument("--shapes-world", action="store_true",
                        help="shapes-world prompts and images (automatic for the embedded model; use for its copies)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="default %(default)s")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="default %(default)s")
    parser.add_argument("--loss", choices=LOSSES, default=defaults.loss, help="default %(default)s")
    parser.add_argument("--lora-gain", choices=LORA_GAINS, default=defaults.lora_gain,
                        help="one: the LoRA branch as is, the guidance head carries the scale (default); scale-1: "
                             "the branch times s - 1 (format-1 adapters; not for --mode fast)")
    parser.add_argument("--no-head", action="store_true",
                        help="no guidance head: the LoRA alone carries the scale (format-1 adapters; see "
                             "pipelines/guidance_format.py make_guidance_head)")
    parser.add_argument("--min-scale", type=float, default=defaults.min_scale,
                        help="train for guidance scales in [this, --max-scale] (default %(default)s)")
    parser.add_argument("--max-scale", type=float, default=defaults.max_scale,
                        help="train for guidance scales in [--min-scale, this] (default %(default)s)")
    parser.add_argument("--student-rollouts", type=float, default=defaults.student_rollouts,
                        help="--data edits: share of edits that follow the student's own output (default %(default)s)")
    parser.add_argument("--accumulate", type=int, default=defaults.accumulate,
                        help="--data edits: denoiser calls per optimizer step (default %(default)s)")
    parser.add_argument("--call-sampling", choices=CALL_SAMPLING, default=defaults.call_sampling,
                        help="--data edits: by-noise trains on a call at timestep t with probability "
                             "max(0.25, t / T), all on every call (default %(default)s)")
    parser.add_argument("--background-weights", type=background_weights_argument, default=defaults.background_weights,
                        help="shapes-world edit rollouts: draw these scene backgrounds more (or less) often than "
                             "the others, e.g. 'sea=3' (default: uniform)")
    parser.add_argument("--fast-steps", type=int, default=defaults.fast_steps,
                        help="--mode fast: the student's steps (default %(default)s)")
    parser.add_argument("--teacher-steps", type=int, default=defaults.teacher_steps,
                        help="--mode fast: the CFG teacher's steps, a multiple of --fast-steps (default %(default)s)")
    parser.add_argument("--embedding-dim", type=int, default=defaults.embedding_dim, help="default %(default)s")
    parser.add_argument("--pool", type=int, default=defaults.pool, help="clean latents kept for --data noised")
    parser.add_argument("--ckpt-minutes", type=float, default=defaults.ckpt_minutes, help="default %(default)s")
    parser.add_argument("--state", default=None, help="optimizer-state folder (default runs/distill/<out name>-<hash>)")
    parser.add_argument("--fresh", action="store_true", help="start over instead of continuing the adapter in --out")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="less GPU memory, slower (SD models)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.set_defaults(handler=run_distill_command)
    return parser


def run_distill_command(args) -> int:
    steps = args.steps if args.steps is not None else (None if args.minutes is not None else DistillConfig.steps)
    config = DistillConfig(
        mode=args.mode, steps=steps, minutes=args.minutes, rank=args.rank, alpha=args.alpha,
        targets=tuple(t.strip() for t in args.targets.split(",") if t.strip()), data=args.data, loss=args.loss,
        lora_gain=args.lora_gain, head=not args.no_head, batch_size=args.batch_size, lr=args.lr,
        min_scale=args.min_scale, max_scale=args.max_scale, student_rollouts=args.student_rollouts,
        accumulate=args.accumulate, call_sampling=args.call_sampling, background_weights=args.background_weights,
        fast_steps=args.fast_steps, teacher_steps=args.teacher_steps, embedding_dim=args.embedding_dim,
        pool=args.pool, ckpt_minutes=args.ckpt_minutes, seed=args.seed, fresh=args.fresh,
        gradient_checkpointing=args.gradient_checkpointing)
    meta = distill_model(args.model, args.out, config, prompts_file=args.prompts,
                         shapes_world=True if args.shapes_world else None, device=args.device, threads=args.threads,
                         state_dir=args.state)
    print(json.dumps(meta, indent=2))
    return 0
