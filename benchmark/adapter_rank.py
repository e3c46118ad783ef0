"""How much rank a trained guidance adapter uses: its per-layer deltas cut to rank k, each cut editing.

    python -m benchmark.adapter_rank [--model embedded|FOLDER] [--ranks 64,32,16,8] [--plans 80] [--seed 0]
                                     [--json OUT.json]

The distilled adapter's dense delta of every adapted layer (LoRA B A x scaling) is replaced by its best rank-k
approximation (SVD; the guidance head and the scale embedding stay), and every held-out masked edit of `--plans`
shapes-world plans is painted by each cut on CFG's base stack (benchmark.guidance_modes.paint_plan), judged by
the analytic detector. Prints, per rank: the share of the deltas' energy kept (least and median layer), colour +
shape and colour in the box (paired difference to CFG with 95% intervals), PSNR vs CFG. Seed 0 is the set the
shipped adapters were selected on; benchmark.guidance_modes judges them on seed 1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmark import guidance_modes
from benchmark.plans import shapes_plan


def cut_deltas(deltas: list[torch.Tensor], rank: int) -> tuple[list[torch.Tensor], list[float]]:
    """Each delta (out, in[, kh, kw]) as its best rank-`rank` approximation, and the share of its squared
    singular values kept."""
    cut, kept = [], []
    for delta in deltas:
        u, values, vh = torch.linalg.svd(delta.reshape(delta.shape[0], -1).double(), full_matrices=False)
        kept.append(float((values[:rank] ** 2).sum() / (values ** 2).sum().clamp_min(1e-30)))
        cut.append(((u[:, :rank] * values[:rank]) @ vh[:rank]).reshape(delta.shape).to(delta.dtype))
    return cut, kept


def rank_setups(adapter, ranks: list[int]) -> tuple[dict, dict]:
    """paint_plan setups: "rank-k" puts the rank-k deltas in the adapter's buffers and runs guidance="distilled"."""
    full = [getattr(module, adapter.buffer).clone() for module in adapter.modules]
    setups, energy = {}, {}
    for rank in ranks:
        deltas, energy[rank] = cut_deltas(full, rank)

        def use(deltas=deltas) -> str:
            for module, delta in zip(adapter.modules, deltas):
                getattr(module, adapter.buffer).copy_(delta)
            adapter.fusion_cache = None  # fused weights of another cut must not be reused
            return "distilled"

        setups[f"rank-{rank}"] = use
    return setups, energy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--ranks", default="64,32,16,8", help="comma list (default %(default)s)")
    parser.add_argument("--plans", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    session = guidance_modes.load_session(args.model)
    adapter = session.pipeline.adapters.get("distilled")
    if adapter is None:
        parser.error(f"{args.model} has no guidance adapter (train one: python -m training distill)")
    ranks = [int(rank) for rank in args.ranks.split(",")]
    setups, energy = rank_setups(adapter, ranks)
    names = ["cfg", *setups]
    rows = [row for index in range(args.plans)
            for row in guidance_modes.paint_plan(session, shapes_plan(args.seed, index), names, setups)]
    summary = guidance_modes.summarise_quality(rows, names)
    print(f"{summary['edits']} held-out edits of {summary['plans']} plans (seed {args.seed}); CFG colour + shape "
          f"{guidance_modes.fmt_rate(summary['cfg_success'])}, colour {guidance_modes.fmt_rate(summary['cfg_colour'])}")
    result = {"summary": summary, "energy": {}}
    for rank in ranks:
        name = f"rank-{rank}"
        result["energy"][rank] = {"least": min(energy[rank]), "median": float(np.median(energy[rank]))}
        print(f"rank {rank:>3}: energy kept {min(energy[rank]):.1%} least / {np.median(energy[rank]):.1%} median "
              f"layer; colour + shape {guidance_modes.fmt_rate(summary[f'{name}_success'])} "
              f"({guidance_modes.fmt_difference(summary[f'{name}_minus_cfg_success'])}), colour "
              f"{guidance_modes.fmt_rate(summary[f'{name}_colour'])} "
              f"({guidance_modes.fmt_difference(summary[f'{name}_minus_cfg_colour'])}), "
              f"PSNR vs CFG {summary[f'{name}_psnr_vs_cfg_db']} dB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
