"""Rough mask in, tight edit out: tight edits against whole-mask repaint on the same held-out rough-box edits.

    python -m benchmark.rough_masks [--edits 120] [--model embedded|FOLDER] [--out benchmark/results/rough-masks]

Each edit: a generated background (its own seed), then one held-out (colour, shape) object asked for inside a
rough box of ROUGH_BOX_FRACTION of the image (the embedded model draws objects of about a third of such a box;
the report prints the measured box / object area ratio). Both fits edit the same background with the same seed,
in alternating order, so timings are interleaved and the comparison is paired. Printed and written (results.json,
report.md, contact sheet):
- background inside the rough mask, away from the object (the detector's object grown 3 px), PSNR vs the image
  before the edit: median and 95% interval (bootstrap over edits);
- seam score at the rough mask's edge (1 = no seam): median and interval;
- edit success (colour + shape in the box) per fit, with the paired McNemar test;
- pixels changed outside the rough mask (must be 0);
- edit latency, tight / whole (median of per-edit ratios, interleaved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark import detector, metrics, stats
from benchmark import shapes_world as world
from editor import Session
from memory import write_atomic
from pipelines import masks

ROUGH_BOX_FRACTION = (0.25, 0.45)  # of the image's area
FITS = ("tight", "whole")
SEED_OFFSET = 7000  # held-out edits here never share a seed with training/evaluate.py's masked-edit gate


def held_out_edit(index: int, size: int) -> tuple[str, str, str, tuple[int, int, int, int]]:
    """(background, colour, shape, rough box) of edit `index`: a held-out object triple, all from the index."""
    rng = np.random.default_rng(SEED_OFFSET + index)
    while True:
        background = str(rng.choice(world.BACKGROUNDS))
        colour, shape = str(rng.choice(list(world.COLOURS))), str(rng.choice(world.SHAPES))
        if world.is_held_out(colour, shape, background):
            return background, colour, shape, world.random_box(rng, size, *ROUGH_BOX_FRACTION)


def run_edit(session: Session, index: int, fit: str) -> dict:
    background, colour, shape, box = held_out_edit(index, session.pipeline.default_size[0])
    session.generate(world.caption(background, []), seed=SEED_OFFSET + index)
    before = np.asarray(session.image).copy()
    started = time.perf_counter()
    session.edit(world.object_prompt(colour, shape), box, mask_fit=fit)
    seconds = time.perf_counter() - started
    after = np.asarray(session.image)
    rough = masks.box_mask(box, session.size)
    found = detector.detect(after, box, colour, shape)
    obj = detector.object_mask(after, box, colour)
    changed_outside = int(np.abs(after.astype(int) - before.astype(int))[~rough].max(initial=0))
    return {"index": index, "fit": fit, "colour": colour, "shape": shape, "box": list(box), "seconds": seconds,
            "success": bool(found.colour_found and found.shape_found), "colour_found": bool(found.colour_found),
            "background_in_mask_psnr": stats.cap_psnr(metrics.background_in_mask_psnr(before, after, rough, obj)),
            "seam": metrics.seam_score(before, after, rough),
            "box_over_object": float(rough.sum() / obj.sum()) if obj.any() else None,
            "max_change_outside_mask": changed_outside, "images": (before, after)}


def summarise(rows: list[dict]) -> dict:
    by_fit = {fit: [r for r in rows if r["fit"] == fit] for fit in FITS}
    summary = {}
    for fit, fit_rows in by_fit.items():
        psnrs = [r["background_in_mask_psnr"] for r in fit_rows if r["background_in_mask_psnr"] is not None]
        seams = [r["seam"] for r in fit_rows if r["seam"] is not None]
        summary[fit] = {
            "edits": len(fit_rows),
            "success": stats.estimate({str(r["index"]): [float(r["success"])] for r in fit_rows}),
            "colour_in_box": float(np.mean([r["colour_found"] for r in fit_rows])),
            "background_in_mask_psnr": stats.estimate({str(i): [v] for i, v in enumerate(psnrs)}, np.median),
            "background_in_mask_psnr_min": float(min(psnrs)),
            "seam": stats.estimate({str(i): [v] for i, v in enumerate(seams)}, np.median),
            "box_over_object_median": statistics.median(r["box_over_object"] for r in fit_rows if r["box_over_object"]),
            "edits_changing_pixels_outside_mask": sum(r["max_change_outside_mask"] > 0 for r in fit_rows),
            "seconds_median": statistics.median(r["seconds"] for r in fit_rows),
        }
    pairs = list(zip(by_fit["tight"], by_fit["whole"]))
    summary["paired"] = {
        "success_mcnemar": stats.mcnemar([(a["success"], b["success"]) for a, b in pairs]),
        "success_difference_points": 100 * (summary["tight"]["success"]["value"] - summary["whole"]["success"]["value"]),
        "latency_ratio_tight_over_whole": statistics.median(a["seconds"] / b["seconds"] for a, b in pairs),
    }
    return summary


def contact_sheet(rows: list[dict], count: int = 8) -> Image.Image:
    """Per edit: before | whole | tight, the rough box outlined."""
    tiles = []
    for tight, whole in list(zip(rows[0::2], rows[1::2]))[:count]:
        tight, whole = sorted((tight, whole), key=lambda r: r["fit"] != "tight")
        before = tight["images"][0]
        framed = [_outlined(r["images"][1], r["box"]) for r in (whole, tight)]
        tiles.append(np.concatenate([before] + framed, axis=1))
    sheet = np.concatenate(tiles, axis=0)
    return Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST)


def _outlined(image: np.ndarray, box) -> np.ndarray:
    framed = image.copy()
    x0, y0, x1, y1 = box
    framed[y0, x0:x1] = framed[y1 - 1, x0:x1] = framed[y0:y1, x0] = framed[y0:y1, x1 - 1] = 255
    return framed


def report(summary: dict, edits: int) -> str:
    tight, whole, paired = summary["tight"], summary["whole"], summary["paired"]

    def interval(entry, digits=1):
        low, high = entry["ci95"]
        return f"{entry['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    lines = [
        f"# Rough masks: tight edits vs whole-mask repaint ({edits} held-out edits, paired)", "",
        "| | tight | whole |", "|---|---|---|",
        f"| background in mask, away from the object: PSNR median dB [95% CI] | "
        f"{interval(tight['background_in_mask_psnr'])} | {interval(whole['background_in_mask_psnr'])} |",
        f"| same, minimum dB | {tight['background_in_mask_psnr_min']:.1f} | {whole['background_in_mask_psnr_min']:.1f} |",
        f"| seam at the rough mask's edge, median (1 = none) | {interval(tight['seam'], 2)} | "
        f"{interval(whole['seam'], 2)} |",
        f"| success, colour + shape in box [95% CI] | {interval(tight['success'], 3)} | {interval(whole['success'], 3)} |",
        f"| colour in box | {tight['colour_in_box']:.3f} | {whole['colour_in_box']:.3f} |",
        f"| edits changing any pixel outside the rough mask | {tight['edits_changing_pixels_outside_mask']} | "
        f"{whole['edits_changing_pixels_outside_mask']} |",
        f"| rough box / detected object area, median | {tight['box_over_object_median']:.2f} | "
        f"{whole['box_over_object_median']:.2f} |",
        f"| seconds per edit, median | {tight['seconds_median']:.3f} | {whole['seconds_median']:.3f} |", "",
        f"Success difference tight - whole: {paired['success_difference_points']:+.1f} points; McNemar "
        f"p = {paired['success_mcnemar']['p']:.3g} (edits only tight got right: {paired['success_mcnemar']['a_only']}, "
        f"only whole: {paired['success_mcnemar']['b_only']}).",
        f"Latency tight / whole (median of per-edit ratios, interleaved): "
        f"{paired['latency_ratio_tight_over_whole']:.3f}.", "",
        "PSNR over pixels inside the rough box but outside the detector's object grown by 3 px, against the image "
        "before the edit (capped for JSON; bit-identical pixels score the cap). Seam: the gradient step across the "
        "box's edge over the gradient nearby, after the edit over before it (benchmark.metrics.seam_score).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edits", type=int, default=120)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--out", type=Path, default=Path("benchmark/results/rough-masks"))
    args = parser.parse_args(argv)
    session = Session.from_pretrained(None if args.model == "embedded" else args.model)
    session.pipeline.set_progress_bar_config(disable=True)
    rows = []
    for index in range(args.edits):
        order = FITS if index % 2 == 0 else FITS[::-1]  # alternate who runs first: interleaved timing
        rows += sorted((run_edit(session, index, fit) for fit in order), key=lambda r: FITS.index(r["fit"]))
    summary = summarise(rows)
    text = report(summary, args.edits)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    plain = [{k: v for k, v in row.items() if k != "images"} for row in rows]
    write_atomic(args.out / "results.json", json.dumps({"summary": summary, "edits": plain}, indent=1).encode())
    write_atomic(args.out / "report.md", text.encode())
    contact_sheet(rows).save(args.out / "contact-sheet.png")
    return summary


if __name__ == "__main__":
    main()
