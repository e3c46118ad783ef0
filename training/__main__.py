"""python -m training {tokenizer,vae,unet,evaluate,assemble} [options]

Reproducible recipe for the embedded model (assets/embedded/), from scratch on CPU (CUDA used when present):
    python -m training tokenizer
    python -m training vae --minutes 40 --threads 1
    python -m training unet --minutes 150 --threads 1      # repeat to continue training (resumes)
    python -m training evaluate
    python -m training distill --minutes 30 --threads 1    # guidance adapter -> assets/embedded/guidance
Every run resumes from assets/embedded (+ runs/ optimizer state when present) and records steps, minutes,
hardware and metrics in assets/embedded/training_state.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

from . import configs
from .common import RunOptions
from .train_unet import UNET_RUN
from .train_vae import VAE_RUN


RUN_FLAGS = (  # (flag, RunOptions field, type, help): what every trainer's run takes; defaults from its RunOptions
    ("--minutes", "minutes", float, "wall-clock time budget (default %(default)s)"),
    ("--threads", "threads", int, "torch CPU threads (default %(default)s)"),
    ("--batch-size", "batch_size", int, "default %(default)s"),
    ("--lr", "lr", float, "peak learning rate (default %(default)s)"),
    ("--ckpt-minutes", "ckpt_minutes", float, "checkpoint interval (default %(default)s)"),
    ("--max-steps", "max_steps", int, "stop after this many steps in this run"),
    ("--out", "out_dir", str, "model folder (default %(default)s)"),
    ("--runs", "run_dir", str, "optimizer-state folder (default %(default)s)"),
    ("--seed", "seed", int, "default: from the clock and the step count"),
)


def add_run_flags(parser: argparse.ArgumentParser, defaults: RunOptions) -> None:
    for flag, field, kind, text in RUN_FLAGS:
        parser.add_argument(flag, dest=field, type=kind, default=getattr(defaults, field), help=text)
    parser.add_argument("--tiny", action="store_true", help="tiny test configs")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("tokenizer", help="build the word-level tokenizer into <out>/tokenizer")
    p.add_argument("--out", default=str(configs.EMBEDDED_DIR))
    p = sub.add_parser("vae", help="train the VAE")
    add_run_flags(p, VAE_RUN)
    p.add_argument("--decoder-only", action="store_true",
                   help="fine-tune decoder only (latents unchanged; automatic once a UNet exists)")
    p = sub.add_parser("unet", help="train UNet + text encoder jointly (VAE frozen)")
    add_run_flags(p, UNET_RUN)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--pool", type=int, default=2048, help="size of the encoded-latent pool")
    p.add_argument("--refresh", type=int, default=8, help="fresh scenes encoded into the pool per step")
    p.add_argument("--curriculum-steps", type=int, default=1500,
                   help="total UNet steps during which scenes have at most 1 object")
    p = sub.add_parser("evaluate", help="quality gates on held-out data (writes JSON + contact sheet)")
    p.add_argument("--model", default=str(configs.EMBEDDED_DIR))
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--edits", type=int, default=100, help="held-out masked edits through Session")
    p.add_argument("--out", default=None, help="results folder (default <repo>/runs/eval)")
    p = sub.add_parser("assemble", help="write model_index.json (+ scheduler, tokenizer)")
    p.add_argument("--out", default=str(configs.EMBEDDED_DIR))
    from .distill import add_distill_command

    add_distill_command(sub)
    return ap


def run_options(defaults: RunOptions, args) -> RunOptions:
    """The trainer's run options with the common flags applied."""
    flags = {field: getattr(args, field) for _, field, _, _ in RUN_FLAGS}
    return dataclasses.replace(defaults, tiny=args.tiny, **flags)


def main(argv=None):
    a = build_parser().parse_args(argv)

    if a.cmd == "tokenizer":
        from .tokenizer import save_tokenizer

        tok = save_tokenizer(f"{a.out}/tokenizer")
        print(f"tokenizer: {len(tok)} tokens -> {a.out}/tokenizer")
    elif a.cmd == "vae":
        from .train_vae import train_vae

        train_vae(run_options(VAE_RUN, a), decoder_only=a.decoder_only)
        from .assemble import assemble

        assemble(a.out_dir)
    elif a.cmd == "unet":
        from .train_unet import train_unet

        train_unet(run_options(UNET_RUN, a), ema=a.ema, pool=a.pool, refresh=a.refresh,
                   curriculum_steps=a.curriculum_steps)
    elif a.cmd == "evaluate":
        from .evaluate import evaluate

        print(json.dumps(evaluate(model_dir=a.model, n=a.samples, cfg=a.cfg, steps=a.steps, threads=a.threads,
                                  out_dir=a.out, edits=a.edits), indent=2))
    elif a.cmd == "assemble":
        from .assemble import assemble

        assemble(a.out)
    elif a.cmd == "distill":
        a.handler(a)


if __name__ == "__main__":
    main()
