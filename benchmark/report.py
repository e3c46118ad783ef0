"""Merge the per-scene result files into results.json, costs.json, report.md, contact sheets and plots.

Run by the main process after every process has finished (and by `bench --merge-only`). It reads
only files, so it gives the same results.json however many processes wrote the scene files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmark import metrics
from benchmark.runner import json_bytes, scene_paths
from memory import png_bytes, write_atomic

CLIP_SKIPPED = "CLIP score skipped: no --clip model given."
SHEET_MIN_SIDE = 96  # contact-sheet tiles are upscaled (nearest) to at least this many pixels
OUTLINE_CURRENT = (255, 230, 0)  # this step's mask
OUTLINE_EARLIER = (0, 200, 255)  # masks of earlier edits
PSNR_CEILING = 60.0  # bit-identical (infinite PSNR) is drawn here in plots, and labelled so


# ----------------------------------------------------------------------------------------- collecting
def collect(out: Path) -> dict:
    """Read run.json and every scene file into {run, records, costs, failed, missing}."""
    if not (out / "run.json").is_file():
        raise FileNotFoundError(f"{out} holds no benchmark run (no run.json): nothing to merge")
    run = json.loads((out / "run.json").read_text())
    records, costs, failed, missing = {}, {}, [], []
    for plan in run["plans"]:
        for method in run["methods"]:
            if method["settings"] is None:
                continue
            path, _ = scene_paths(out, plan["name"], method["name"])
            if not path.is_file():
                missing.append(f"{plan['name']}/{method['name']}")
                continue
            record = json.loads(path.read_text())
            if record["status"] != "ok":
                failed.append(record)
                continue
            costs.setdefault(plan["name"], {})[method["name"]] = record.pop("costs")
            records.setdefault(plan["name"], {})[method["name"]] = record
    return {"run": run, "records": records, "costs": costs, "failed": failed, "missing": missing}


def rows_by_method(collected: dict) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for scene, by_method in collected["records"].items():
        for method, record in by_method.items():
            rows.setdefault(method, []).extend(metrics.edit_rows(record, collected["costs"][scene][method]))
    return rows


# ----------------------------------------------------------------------------------------- merge
def merge(out: str | Path) -> dict:
    """Write results.json, costs.json, report.md, contact/<scene>.png and plots/*.png; return the results."""
    out = Path(out)
    collected = collect(out)
    run = collected["run"]
    rows = rows_by_method(collected)
    summary = {method: metrics.summarise(method_rows) for method, method_rows in rows.items()}
    results = {
        "config": run["config"],
        "methods": {m["name"]: {k: m[k] for k in ("bundle", "settings", "reason")} for m in run["methods"]},
        "scenes": collected["records"],
        "failed": [{k: f[k] for k in ("scene", "method", "error")} for f in collected["failed"]],
        "missing": collected["missing"],
        "summary": {method: {k: v for k, v in s.items() if k != "seconds_median"} for method, s in summary.items()},
    }
    write_atomic(out / "results.json", json_bytes(results), parents=True)
    shards = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("process-*.json"))]
    costs = {"scenes": collected["costs"], "processes": shards}
    write_atomic(out / "costs.json", json_bytes(costs), parents=True)
    for scene, by_method in collected["records"].items():
        sheet = png_bytes(contact_sheet(out, scene, by_method))
        write_atomic(out / "contact" / f"{scene}.png", sheet, parents=True)
    figures = plot(rows, out / "plots")
    write_atomic(out / "report.md", report(collected, rows, summary, shards, figures).encode(), parents=True)
    return results


# ----------------------------------------------------------------------------------------- report.md
def fmt(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "%":
        return f"{100 * value:.0f}%"
    if kind == "dB":
        return "∞" if np.isinf(value) else f"{value:.1f}"
    if kind == "KiB":
        return f"{value / 1024:.1f}"
    if kind == "MiB":
        return f"{value / 2**20:.0f}"
    if kind == "s":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    rows = [[cell.replace("|", "\\|") for cell in line] for line in lines]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


SUMMARY_COLUMNS = [  # (header, summary key, format)
    ("edits", "edits", ""),
    ("bg PSNR med (dB)", "background_psnr_median", "dB"), ("bg PSNR min", "background_psnr_min", "dB"),
    ("bg max abs diff", "background_max_abs_diff", ""), ("bg identical", "background_identical", "%"),
    ("prior PSNR med", "prior_psnr_median", "dB"), ("prior PSNR min", "prior_psnr_min", "dB"),
    ("prior max abs diff", "prior_max_abs_diff", ""),
    ("success colour", "success_colour", "%"), ("success shape", "success_shape", "%"),
    ("shape, held-out", "success_shape_held_out", "%"), ("earlier kept", "persistence", "%"),
    ("CLIP crop", "clip_crop_mean", ""),
    ("UNet evals/edit", "unet_evals_mean", ""), ("KiB/layer", "memory_bytes_mean", "KiB"),
    ("s/edit (median)", "seconds_median", "s"),
]
INDEX_TABLES = [  # per edit index: (title, summary key, format)
    ("Background PSNR (median dB) outside all masks so far", "background_psnr_median", "dB"),
    ("Prior-layer PSNR (median dB) inside earlier visible regions", "prior_psnr_median", "dB"),
    ("Edit success (detector: colour and shape in the box)", "success_shape", "%"),
    ("Earlier objects still detected", "persistence", "%"),
    ("Wall time per edit (median s)", "seconds_median", "s"),
]


def report(collected: dict, rows: dict[str, list[dict]], summary: dict, shards: list[dict],
           figures: list[str]) -> str:
    run, config = collected["run"], collected["run"]["config"]
    methods = [m["name"] for m in run["methods"] if m["name"] in summary]
    lines = [f"# Sequential-edit benchmark: {config['suite']}", "",
             f"Model `{config['model']}`, {config['steps']} steps, seed {config['seed']}; "
             f"{len(collected['records'])} of {len(run['plans'])} scenes; metrics are defined in "
             "`benchmark/metrics.py`.", ""]

    # Methods, including the ones this editor cannot run
    lines += ["## Methods", ""]
    lines += _table(["method", "status", "settings"], [
        [m["name"], "ok" if m["settings"] else f"unavailable ({m['reason']})",
         ", ".join(f"{k}={v}" for k, v in m["bundle"].items())] for m in run["methods"]])
    lines.append("")

    # Per method
    lines += ["## Per method (all edits of all scenes)", ""]
    lines += _table(["method"] + [c[0] for c in SUMMARY_COLUMNS],
                    [[m] + [fmt(summary[m][key], kind) for _, key, kind in SUMMARY_COLUMNS] for m in methods])
    lines.append("")

    # Per edit index
    lines += ["## Per edit index", ""]
    indexes = sorted({row["index"] for method_rows in rows.values() for row in method_rows})
    for title, key, kind in INDEX_TABLES:
        by_index = {m: {i: metrics.summarise([r for r in rows[m] if r["index"] == i]) for i in indexes}
                    for m in methods}
        lines += [f"### {title}", ""]
        lines += _table(["edit"] + methods, [[str(i)] + [fmt(by_index[m][i][key], kind) if by_index[m][i]["edits"]
                                                          else "" for m in methods] for i in indexes])
        lines.append("")

    # Costs
    lines += ["## Costs", ""]
    growth = _latency_growth(rows)
    for method, (first, last, index) in growth.items():
        lines.append(f"- {method}: edit {index} takes {fmt(last, 's')} s vs {fmt(first, 's')} s for edit 1 "
                     f"(x{last / first:.2f}, medians over scenes).")
    cfg, distilled = (summary.get(m, {}).get("seconds_median") for m in ("full", "distilled"))
    if cfg and distilled:  # the same edits, settings and attention; only the guidance differs
        lines.append(f"- Distilled vs CFG (full): {fmt(distilled, 's')} s vs {fmt(cfg, 's')} s per edit, ratio "
                     f"{distilled / cfg:.2f}; UNet evaluations {fmt(summary['distilled']['unet_evals_mean'])} vs "
                     f"{fmt(summary['full']['unet_evals_mean'])}.")
    peak = max((s["peak_rss_bytes"] or 0 for s in shards), default=0)
    cuda = [c.get("cuda_peak_bytes") for by_method in collected["costs"].values() for c in by_method.values()]
    cuda = [c for c in cuda if c]
    lines.append(f"- Peak resident memory: {fmt(peak, 'MiB')} MiB (largest over {len(shards)} process(es))"
                 + (f"; CUDA peak allocated {fmt(max(cuda), 'MiB')} MiB." if cuda else "."))
    lines.append("- Timings and memory are in costs.json; results.json holds only deterministic numbers.")
    lines.append("")

    # Notes
    lines += ["## Notes", ""]
    lines += _notes(collected, rows)
    lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    lines += ["", "Contact sheets: `contact/<scene>.png` (rows = methods; columns = background, then each edit; "
              "yellow = this edit's mask, blue = earlier masks)."]
    return "\n".join(lines) + "\n"


def _notes(collected: dict, rows: dict[str, list[dict]]) -> list[str]:
    notes = []
    config = collected["run"]["config"]
    notes.append(f"- CLIP crop score from `{config['clip']}`." if config["clip"] else f"- {CLIP_SKIPPED}")
    all_rows = [row for method_rows in rows.values() for row in method_rows]
    if not any(row["shape_found"] is not None for row in all_rows):
        notes.append("- Edit success and persistence: n/a (the detector needs plans with colour and shape, "
                     "i.e. the shapes suite).")
    held = [e for p in collected["run"]["plans"] for e in p["edits"] if e.get("held_out") is not None]
    if held:
        notes.append(f"- Held-out (colour, shape, background) triples: {sum(e['held_out'] for e in held)} of "
                     f"{len(held)} edits (preferred, so success is not memorised training data).")
    cut = sorted({(scene, record["background"]["prompt_truncated"], tuple(e["index"] for e in record["edits"]
                                                                          if e["prompt_truncated"]))
                  for scene, by_method in collected["records"].items() for record in by_method.values()})
    cut = [(scene, background, edits) for scene, background, edits in cut if background or edits]
    if cut:
        notes.append(f"- Prompts truncated to the text encoder's window (trailing words dropped) in {len(cut)} "
                     "scene(s); the prompts as used are in results.json:")
        notes += [f"  - {scene}: " + ", ".join((["background"] if background else []) + [f"edit {i}" for i in edits])
                  for scene, background, edits in cut]
    for failure in collected["failed"]:
        notes.append(f"- FAILED {failure['scene']}/{failure['method']}: {failure['error']}")
    if collected["missing"]:
        notes.append(f"- Not run yet ({len(collected['missing'])} pairs): {', '.join(collected['missing'][:10])}"
                     + (" ..." if len(collected["missing"]) > 10 else ""))
    return notes


def _latency_growth(rows: dict[str, list[dict]]) -> dict[str, tuple[float, float, int]]:
    """Per method: median seconds of edit 1 and of the last edit index reached (when there are >= 2)."""
    growth = {}
    for method, method_rows in rows.items():
        last = max((row["index"] for row in method_rows), default=1)
        first_s = metrics.median(r["seconds"] for r in method_rows if r["index"] == 1)
        last_s = metrics.median(r["seconds"] for r in method_rows if r["index"] == last)
        if last > 1 and first_s and last_s:
            growth[method] = (first_s, last_s, last)
    return growth


# ----------------------------------------------------------------------------------------- figures
def contact_sheet(out: Path, scene: str, by_method: dict[str, dict]) -> np.ndarray:
    """Rows = methods, columns = background then each edit's result, masks outlined, method names on the left."""
    tiles = []
    for method, record in by_method.items():
        _, strip_path = scene_paths(out, scene, method)
        strip = np.asarray(Image.open(strip_path).convert("RGB"))
        width, height = record["size"]
        scale = max(1, -(-SHEET_MIN_SIDE // min(width, height)))
        steps = [strip[:, k * width:(k + 1) * width] for k in range(strip.shape[1] // width)]
        row = []
        for k, step in enumerate(steps):
            tile = Image.fromarray(step).resize((width * scale, height * scale), Image.NEAREST)
            draw = ImageDraw.Draw(tile)
            for j, edit in enumerate(record["edits"][:k]):
                x0, y0, x1, y1 = (v * scale for v in edit["box"])
                colour = OUTLINE_CURRENT if j == k - 1 else OUTLINE_EARLIER
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=1 if j < k - 1 else 2)
            row.append(np.asarray(tile))
        label = Image.new("RGB", (8 * max(len(m) for m in by_method) + 8, height * scale), (255, 255, 255))
        ImageDraw.Draw(label).text((4, 4), method, fill=(0, 0, 0))
        tiles.append(np.concatenate([np.asarray(label)] + row, axis=1))
    widest = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, 2), (0, widest - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    return np.concatenate(tiles, axis=0)


def plot(rows: dict[str, list[dict]], folder: Path) -> list[str]:
    """preservation.png (background and prior-layer PSNR vs edit index) and latency.png; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    if not rows:
        return []
    per_index = {m: {i: metrics.summarise([r for r in method_rows if r["index"] == i])
                     for i in sorted({r["index"] for r in method_rows})} for m, method_rows in rows.items()}

    def curve(method, key, ceiling=np.inf):
        points = [(i, s[key]) for i, s in per_index[method].items() if s[key] is not None]
        return [p[0] for p in points], [min(p[1], ceiling) for p in points]

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((axes[0], "background_psnr_median", "background (outside all masks)"),
                             (axes[1], "prior_psnr_median", "earlier layers (visible regions)")):
        for method in rows:
            axis.plot(*curve(method, key, PSNR_CEILING), marker="o", label=method)
        axis.set(title=title, xlabel="edit index",
                 ylabel=f"median PSNR, dB (bit-identical drawn at {PSNR_CEILING:.0f})")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(folder / "preservation.png", dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(5, 4))
    for method in rows:
        axis.plot(*curve(method, "seconds_median"), marker="o", label=method)
    axis.set(title="latency vs layer index", xlabel="edit index (layers below it)", ylabel="median seconds per edit")
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend()
    figure.tight_layout()
    figure.savefig(folder / "latency.png", dpi=100)
    plt.close(figure)
    return ["plots/preservation.png", "plots/latency.png"]

