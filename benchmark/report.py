"""Merge the per-scene result files into results.json, costs.json, report.md, contact sheets and plots.

Run by the main process after every process has finished (and by `bench --merge-only`). It reads
only files, so it gives the same results.json however many processes wrote the scene files. The
numbers come from `benchmark.analysis` (intervals, paired tests, effect sizes); this module writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmark import analysis, metrics
from benchmark.methods import COMPARISONS, runs_on
from benchmark.runner import json_bytes, scene_paths
from memory import png_bytes, write_atomic

CLIP_SKIPPED = "CLIP score skipped: no --clip model given."
SHEET_MIN_SIDE = 96  # contact-sheet tiles are upscaled (nearest) to at least this many pixels
OUTLINE_CURRENT = (255, 230, 0)  # this step's mask
OUTLINE_EARLIER = (0, 200, 255)  # masks of earlier edits
PSNR_CEILING = 60.0  # bit-identical (infinite PSNR) is drawn here in plots, and labelled so
MQD_COST_GOAL = 1.1  # long sessions: MQD's edit 24 / edit 1 time should stay at or below this
COST_WINDOW = 3  # long sessions: MQD cost compares the last 3 edits with the first 3 (one edit's time is noisy)
# The settings the report chooses defaults for: (setting, the ablation method, the default's method).
DEFAULT_CHOICES = (("mask_fit", "full-whole", "full"), ("bcg_mask", "full-bcg-binary", "full"),
                   ("routing", "full-erode-dilate", "full"))
# One line per metric, in report.md.
METRIC_LINES = (
    ("success", "the detector finds the asked colour and shape inside the edit's box, right after the edit."),
    ("earlier kept", "an earlier object found in its still-visible region when it was made is still found "
     "there now (like for like: a perfect editor scores 100%)."),
    ("earlier occluded", "an earlier object found in its box when made can no longer be found in the part "
     "later boxes leave visible, even in the image it was made in (legitimate occlusion, not loss)."),
    ("bg in mask", "median PSNR of the background inside the rough mask, away from the new object (the detected "
     "object grown 3 px), against the image just before the edit; ∞ = bit-identical."),
    ("seam", "median of (step across the mask's edge / gradient within 3 px of it) after the edit over the same "
     "ratio before it; 1.0 = no visible seam, > 1 = a visible rectangle."),
    ("bg PSNR", "PSNR outside every mask so far, against the first background (drift); ∞ = bit-identical."),
    ("prior PSNR", "PSNR inside each earlier layer's still-visible region, against the image it was made in."),
    ("95% CI", "percentile bootstrap over scenes (a scene's seeds and edits resampled together)."),
    ("paired tests", "every method edits the same scenes with the same seeds: McNemar (rates) or Wilcoxon "
     "signed-rank (PSNR, seam; ∞ counted as 60 dB) on the paired edits, Holm-corrected over all tests."),
)


# ----------------------------------------------------------------------------------------- collecting
def collect(out: Path) -> dict:
    """Read run.json and every scene file into {run, records, costs, failed, missing}."""
    if not (out / "run.json").is_file():
        raise FileNotFoundError(f"{out} holds no benchmark run (no run.json): nothing to merge")
    run = json.loads((out / "run.json").read_text())
    records, costs, failed, missing = {}, {}, [], []
    for plan in run["plans"]:
        for method in run["methods"]:
            if method["settings"] is None or not runs_on(plan.get("meta") or {}, method["name"]):
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


def rows_by_method(collected: dict, part: str = "main") -> dict[str, list[dict]]:
    """Edit rows per method of the records of one part of the run: "main" (the suite) or "long" sessions."""
    rows: dict[str, list[dict]] = {}
    for scene, by_method in collected["records"].items():
        for method, record in by_method.items():
            if record.get("part", "main") == part:
                rows.setdefault(method, []).extend(metrics.edit_rows(record, collected["costs"][scene][method]))
    return rows


# ----------------------------------------------------------------------------------------- merge
def merge(out: str | Path) -> dict:
    """Write results.json, costs.json, report.md, contact/<scene>.png and plots/*.png; return the results."""
    out = Path(out)
    collected = collect(out)
    run = collected["run"]
    order = [m["name"] for m in run["methods"]]
    rows = _ordered(rows_by_method(collected, "main"), order)
    long_rows = _ordered(rows_by_method(collected, "long"), order)
    summary = {method: analysis.summary(method_rows) for method, method_rows in rows.items()}
    comparisons = analysis.compare(rows, COMPARISONS)
    long_background = {}
    for by_method in collected["records"].values():
        for method, record in by_method.items():
            if record.get("part") == "long":
                long_background.setdefault(method, []).append(record["background"]["memory_bytes"])
    results = {
        "config": run["config"],
        "methods": {m["name"]: {k: m[k] for k in ("bundle", "settings", "reason")} for m in run["methods"]},
        "scenes": collected["records"],
        "failed": [{k: f[k] for k in ("scene", "method", "error")} for f in collected["failed"]],
        "missing": collected["missing"],
        "summary": {method: {k: v for k, v in s.items() if k != "seconds_median"} for method, s in summary.items()},
        "by_index": {method: {measure: analysis.by_index(method_rows, measure)
                              for measure in ("success", "earlier_kept", "background_in_mask_psnr", "seam")}
                     for method, method_rows in rows.items()},
        "comparisons": comparisons,
        "effects_by_index": analysis.effects_by_index(rows, COMPARISONS),
        "long_sessions": analysis.long_sessions(long_rows, long_background),
    }
    write_atomic(out / "results.json", json_bytes(results), parents=True)
    shards = [json.loads(p.read_text()) for p in sorted((out / "shards").glob("process-*.json"))]
    costs = {"scenes": collected["costs"], "processes": shards}
    write_atomic(out / "costs.json", json_bytes(costs), parents=True)
    for scene, by_method in collected["records"].items():
        write_atomic(out / "contact" / f"{scene}.png", png_bytes(contact_sheet(out, scene, by_method)), parents=True)
    figures = plot(rows, results, out / "plots") + plot_long(long_rows, results["long_sessions"], out / "plots")
    text = report(collected, rows, long_rows, results, summary, shards, figures)
    write_atomic(out / "report.md", text.encode(), parents=True)
    return results


def _ordered(rows: dict[str, list[dict]], order: list[str]) -> dict[str, list[dict]]:
    return {name: rows[name] for name in order if name in rows}


# ----------------------------------------------------------------------------------------- report.md
def fmt(value, kind: str = "") -> str:
    if value is None:
        return "–"
    if kind == "%":
        return f"{100 * value:.0f}%"
    if kind == "pp":
        return f"{100 * value:+.1f}"
    if kind == "dB":
        return "∞" if np.isinf(value) else f"{value:.1f}"
    if kind == "KiB":
        return f"{value / 1024:.1f}"
    if kind == "MiB":
        return f"{value / 2**20:.0f}"
    if kind == "x":
        return f"{value:.2f}"
    if kind == "s":
        return f"{value:.3f}"
    if kind == "p":
        return f"{value:.2g}" if value >= 0.001 else "<0.001"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def fmt_ci(estimate: dict | None, kind: str) -> str:
    """"72% [65–79]" from {value, ci95}."""
    if not estimate or estimate.get("value") is None:
        return "–"
    interval = estimate.get("ci95")
    if not interval:
        return fmt(estimate["value"], kind)
    strip = (lambda text: text.rstrip("%")) if kind == "%" else (lambda text: text)
    return f"{fmt(estimate['value'], kind)} [{strip(fmt(interval[0], kind))}–{fmt(interval[1], kind)}]"


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    rows = [[cell.replace("|", "\\|") for cell in line] for line in lines]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


INTERVAL_COLUMNS = [  # (header, summary key holding {value, ci95, n}, format)
    ("success [95% CI]", "success", "%"), ("earlier kept", "earlier_kept", "%"),
    ("earlier occluded", "earlier_occluded", "%"), ("bg in mask (dB)", "background_in_mask_psnr", "dB"),
    ("seam", "seam", "x"),
]
SUMMARY_COLUMNS = [  # (header, flat summary key, format)
    ("edits", "edits", ""),
    ("bg PSNR med (dB)", "background_psnr_median", "dB"), ("bg PSNR min", "background_psnr_min", "dB"),
    ("bg identical", "background_identical", "%"),
    ("prior PSNR med", "prior_psnr_median", "dB"), ("prior max abs diff", "prior_max_abs_diff", ""),
    ("success colour", "success_colour", "%"), ("shape, held-out", "success_shape_held_out", "%"),
    ("CLIP crop", "clip_crop_mean", ""),
    ("UNet evals/edit", "unet_evals_mean", ""), ("KiB/layer", "memory_bytes_mean", "KiB"),
    ("s/edit (median)", "seconds_median", "s"),
]
INDEX_TABLES = [  # per edit index: (title, results["by_index"] measure, format)
    ("Edit success (detector: colour and shape in the box) [95% CI]", "success", "%"),
    ("Earlier objects kept, like for like [95% CI]", "earlier_kept", "%"),
    ("Background inside the rough mask, away from the new object (median dB) [95% CI]",
     "background_in_mask_psnr", "dB"),
    ("Seam at the rough mask's edge (median; 1.0 = none) [95% CI]", "seam", "x"),
]
FLAT_INDEX_TABLES = [  # per edit index, from metrics.summarise: (title, key, format)
    ("Background PSNR (median dB) outside all masks so far", "background_psnr_median", "dB"),
    ("Prior-layer PSNR (median dB) inside earlier visible regions", "prior_psnr_median", "dB"),
    ("Wall time per edit (median s)", "seconds_median", "s"),
]
METRIC_KINDS = {"success": "%", "earlier_kept": "%", "background_in_mask_psnr": "dB", "seam": "x"}


def report(collected: dict, rows: dict[str, list[dict]], long_rows: dict[str, list[dict]], results: dict,
           summary: dict, shards: list[dict], figures: list[str]) -> str:
    run, config = collected["run"], collected["run"]["config"]
    methods = list(rows)
    groups = {r["group"] for method_rows in rows.values() for r in method_rows}
    runs = {r["scene"] for method_rows in rows.values() for r in method_rows}
    long_runs = {r["scene"] for method_rows in long_rows.values() for r in method_rows}
    lines = [f"# Sequential-edit benchmark: {config['suite']}", "",
             f"Model `{config['model']}`, settings preset {config.get('preset', 'default')}, "
             f"{config['steps']} steps, plan seed {config['seed']}, "
             f"{config.get('seeds', 1)} session seed(s) per scene; {len(groups)} scenes ({len(runs)} scene-seed "
             f"runs) and {len(long_runs)} long-session runs; metrics are defined in `benchmark/metrics.py`, "
             "statistics in `benchmark/stats.py`.", ""]
    lines += ["## Metrics", ""] + [f"- **{name}**: {text}" for name, text in METRIC_LINES] + [""]

    # Methods, including the ones this editor cannot run
    lines += ["## Methods", ""]
    lines += _table(["method", "status", "settings"], [
        [m["name"], "ok" if m["settings"] else f"unavailable ({m['reason']})",
         ", ".join(f"{k}={v}" for k, v in m["bundle"].items()) or "(session defaults)"] for m in run["methods"]])
    lines.append("")

    # Per method
    lines += ["## Per method (all edits of all scenes)", ""]
    lines += _table(["method"] + [c[0] for c in INTERVAL_COLUMNS],
                    [[m] + [fmt_ci(summary[m][key], kind) for _, key, kind in INTERVAL_COLUMNS] for m in methods])
    lines.append("")
    lines += _table(["method"] + [c[0] for c in SUMMARY_COLUMNS],
                    [[m] + [fmt(summary[m][key], kind) for _, key, kind in SUMMARY_COLUMNS] for m in methods])
    lines.append("")

    # Paired comparisons and the defaults they choose
    lines += _comparison_lines(results["comparisons"])
    lines += _default_lines(results["comparisons"], results["methods"])

    # Per edit index
    lines += ["## Per edit index", ""]
    indexes = sorted({row["index"] for method_rows in rows.values() for row in method_rows})
    for title, measure, kind in INDEX_TABLES:
        lines += [f"### {title}", ""]
        lines += _table(["edit"] + methods, [[str(i)] + [fmt_ci(results["by_index"][m][measure].get(i), kind)
                                                         for m in methods] for i in indexes])
        lines.append("")
    for title, key, kind in FLAT_INDEX_TABLES:
        by_index = {m: {i: metrics.summarise([r for r in rows[m] if r["index"] == i]) for i in indexes}
                    for m in methods}
        lines += [f"### {title}", ""]
        lines += _table(["edit"] + methods, [[str(i)] + [fmt(by_index[m][i][key], kind) if by_index[m][i]["edits"]
                                                         else "" for m in methods] for i in indexes])
        lines.append("")
    lines += _effect_lines(results["effects_by_index"])

    # Long sessions
    if long_rows:
        lines += _long_lines(long_rows, results["long_sessions"])

    # Costs
    lines += ["## Costs", ""]
    for method, (first, last, index) in _latency_growth(rows).items():
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
    wall = max((s["seconds"] for s in shards), default=0.0)
    busy = sum(s["seconds"] for s in shards)
    pairs = sum(s["pairs_run"] for s in shards)
    lines.append(f"- This run: {pairs} (scene, method) pairs in {wall / 3600:.2f} h wall time over "
                 f"{len(shards)} process(es) ({busy / 3600:.2f} process-hours; a resumed run counts only its "
                 "last session).")
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


def _comparison_lines(comparisons: list[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = ["## Paired comparisons", "",
             "Each method against the method it changes one thing of, on the same edits. Δ = method − reference "
             "(points for rates, dB for PSNR, ratio units for seam), 95% CI over scenes; h = Cohen's h; "
             f"p_Holm over all {len(comparisons)} tests; ✓ = p_Holm < 0.05.", ""]
    table = []
    for c in comparisons:
        kind = METRIC_KINDS[c["metric"]]
        delta_kind = "pp" if kind == "%" else kind
        ci = c["ci95"]
        table.append([f"{c['method']} vs {c['reference']}", c["metric"], str(c["n"]),
                      f"{fmt(c['method_value'], kind)} vs {fmt(c['reference_value'], kind)}",
                      f"{fmt(c['difference'], delta_kind)} [{fmt(ci[0], delta_kind)}, {fmt(ci[1], delta_kind)}]"
                      if ci else "–",
                      fmt(c.get("cohens_h"), "x"), fmt(c["p"], "p"), fmt(c["p_holm"], "p"),
                      "✓" if c["significant"] else ""])
    lines += _table(["comparison", "metric", "pairs", "values", "Δ [95% CI]", "h", "p", "p_Holm", ""], table)
    return lines + [""]


def _default_lines(comparisons: list[dict], methods: dict) -> list[str]:
    """Which default each ablation supports: switch only if the ablation wins a paired test and loses none."""
    lines = ["## Defaults chosen from these numbers", ""]
    for setting, ablation, default in DEFAULT_CHOICES:
        tests = [c for c in comparisons if c["method"] == ablation and c["reference"] == default]
        if not tests:
            reason = (methods.get(ablation) or {}).get("reason") or "not run"
            lines.append(f"- `{setting}`: no paired numbers ({ablation}: {reason}); the default stays.")
            continue
        better = [c["metric"] for c in tests if c["significant"] and _better(c)]
        worse = [c["metric"] for c in tests if c["significant"] and not _better(c)]
        value = (methods[ablation]["bundle"] or {}).get(setting)
        if better and not worse:
            verdict = f"the numbers support `{setting}={value!r}` ({ablation} wins on {', '.join(better)})"
        elif worse and not better:
            verdict = f"the numbers support the current default (`{ablation}` loses on {', '.join(worse)})"
        elif better:
            verdict = (f"mixed: `{ablation}` wins on {', '.join(better)} and loses on {', '.join(worse)}; "
                       "the default stays")
        else:
            verdict = "no significant paired difference; the default stays"
        lines.append(f"- `{setting}`: {verdict}.")
    return lines + [""]


def _better(comparison: dict) -> bool:
    """Higher is better for every tested metric but the seam, where closer to 1 (lower, here) is better."""
    return comparison["difference"] < 0 if comparison["metric"] == "seam" else comparison["difference"] > 0


def _effect_lines(effects: list[dict]) -> list[str]:
    if not effects:
        return []
    lines = ["### Effect sizes per edit index (method − reference, paired, 95% CI over scenes)", ""]
    pairs = list(dict.fromkeys((e["method"], e["reference"]) for e in effects))
    indexes = sorted({e["index"] for e in effects})
    for metric, kind in (("success", "pp"), ("background_in_mask_psnr", "dB")):
        lines += [f"{'Success, points (Cohen h)' if metric == 'success' else 'Background in mask, median dB'}:", ""]
        cells = {(e["method"], e["reference"], e["index"]): e for e in effects if e["metric"] == metric}
        table = []
        for method, reference in pairs:
            row = [f"{method} vs {reference}"]
            for i in indexes:
                e = cells.get((method, reference, i))
                if e is None or e["ci95"] is None:
                    row.append("")
                    continue
                h = f" ({e['cohens_h']:+.2f})" if e.get("cohens_h") is not None else ""
                row.append(f"{fmt(e['difference'], kind)} [{fmt(e['ci95'][0], kind)}, {fmt(e['ci95'][1], kind)}]{h}")
            table.append(row)
        lines += _table(["comparison"] + [f"edit {i}" for i in indexes], table) + [""]
    return lines


def _long_lines(long_rows: dict[str, list[dict]], long: dict) -> list[str]:
    lines = ["## Long sessions", "",
             f"{len({r['group'] for m in long_rows.values() for r in m})} plans of "
             f"{max(r['index'] for m in long_rows.values() for r in m)} edits (boxes 1/36–1/16 of the image), "
             f"methods {', '.join(long_rows)}.", ""]
    indexes = sorted({r["index"] for m in long_rows.values() for r in m})
    methods = list(long_rows)
    lines += ["### Background drift: PSNR outside every mask so far vs the first background (median dB [95% CI])", ""]
    lines += _table(["edit"] + methods, [[str(i)] + [fmt_ci(long[m].get(i, {}).get("background_psnr"), "dB")
                                                     for m in methods] for i in indexes])
    lines += ["", "### Latency: edit k / edit 1 (median seconds over sessions), memory per layer and held", ""]
    timing = {m: _median_seconds(long_rows[m]) for m in methods}
    table = []
    for i in indexes:
        row = [str(i)]
        for m in methods:
            first, now = timing[m].get(1), timing[m].get(i)
            row.append(f"{now / first:.2f}" if first and now else "–")
        row.append(fmt(long[methods[0]][i]["layer_bytes"], "KiB"))
        row.append(fmt(long[methods[0]][i]["session_bytes"], "KiB"))
        table.append(row)
    lines += _table(["edit"] + [f"{m} k/1" for m in methods] + [f"KiB layer k ({methods[0]})", "KiB held"], table)
    lines.append("")
    last = indexes[-1]
    first_window, last_window = indexes[:COST_WINDOW], indexes[-COST_WINDOW:]
    window = {m: (_pooled_median(long_rows[m], first_window), _pooled_median(long_rows[m], last_window))
              for m in methods}
    if last > COST_WINDOW and all(window.get("mqd", (None, None))):
        early, late = window["mqd"]
        ratio = late / early
        plain = window.get("bcg", (None, None))
        overhead = (f"; MQD over plain cross-attention (bcg): x{late / plain[1]:.2f} late, x{early / plain[0]:.2f} "
                    "early") if all(plain) else ""
        verdict = "meets" if ratio <= MQD_COST_GOAL else "misses"
        lines.append(f"- MQD cost as layers pile up: edits {last_window[0]}–{last} / edits 1–{first_window[-1]} = "
                     f"{ratio:.2f} (median seconds over sessions; {verdict} the goal <= {MQD_COST_GOAL}){overhead}. "
                     "Wall times of a shared machine are noisy: `python -m benchmark.mqd_speed --layers 24` "
                     "times edit 24 against edit 1 interleaved.")
        lines.append("")
    return lines


def _pooled_median(rows: list[dict], indexes: list[int]) -> float | None:
    return metrics.median(r["seconds"] for r in rows if r["index"] in indexes)


def _median_seconds(rows: list[dict]) -> dict[int, float]:
    indexes = sorted({r["index"] for r in rows})
    return {i: metrics.median(r["seconds"] for r in rows if r["index"] == i) for i in indexes}


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


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _capped(value, ceiling=PSNR_CEILING):
    return None if value is None else min(float(value), ceiling)


def _error_bars(estimates: list[dict], ceiling: float = np.inf):
    """Values and asymmetric error bars [2, n] from {value, ci95} estimates (missing ones as nan)."""
    values, low, high = [], [], []
    for e in estimates:
        if not e or e.get("value") is None:
            values.append(np.nan)
            low.append(0.0)
            high.append(0.0)
            continue
        value = min(float(e["value"]), ceiling)
        lo, hi = (min(float(v), ceiling) for v in (e["ci95"] or (e["value"], e["value"])))
        values.append(value)
        low.append(max(value - lo, 0.0))
        high.append(max(hi - value, 0.0))
    return np.array(values), np.array([low, high])


def plot(rows: dict[str, list[dict]], results: dict, folder: Path) -> list[str]:
    """Per method with 95% intervals (rates, background in mask, seam), per edit index with interval bands,
    preservation and latency against the edit index; returns the paths written, relative to the report."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    folder.mkdir(parents=True, exist_ok=True)
    if not rows:
        return []
    methods = list(rows)
    summary = results["summary"]
    written = []

    # 1. Per method, with intervals
    panels = [("success", "edit success", "%"), ("earlier_kept", "earlier objects kept (like for like)", "%"),
              ("earlier_occluded", "earlier objects occluded", "%"),
              ("background_in_mask_psnr", f"bg in mask, median dB (identical at {PSNR_CEILING:.0f})", "dB"),
              ("seam", "seam (1.0 = none)", "x")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.5))
    for axis, (key, title, kind) in zip(axes, panels):
        ceiling = PSNR_CEILING if kind == "dB" else np.inf
        values, bars = _error_bars([summary[m][key] for m in methods], ceiling)
        scale = 100.0 if kind == "%" else 1.0
        axis.bar(range(len(methods)), values * scale, yerr=bars * scale, capsize=3, color="tab:blue", alpha=0.7)
        axis.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        axis.set(title=title)
        axis.grid(axis="y", alpha=0.3)
        if kind == "x":
            axis.axhline(1.0, color="black", linewidth=0.8)
    figure.suptitle("per method, 95% bootstrap intervals over scenes")
    figure.tight_layout()
    figure.savefig(folder / "methods.png", dpi=100)
    plt.close(figure)
    written.append("plots/methods.png")

    # 2. Per edit index, with interval bands
    figure, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    for axis, (key, title, kind) in zip(axes, [panels[0], panels[1], panels[3], panels[4]]):
        ceiling = PSNR_CEILING if kind == "dB" else np.inf
        scale = 100.0 if kind == "%" else 1.0
        for method in methods:
            per_index = results["by_index"][method][key]
            indexes = sorted(per_index)
            values, bars = _error_bars([per_index[i] for i in indexes], ceiling)
            line, = axis.plot(indexes, values * scale, marker="o", label=method)
            axis.fill_between(indexes, (values - bars[0]) * scale, (values + bars[1]) * scale,
                              color=line.get_color(), alpha=0.12)
        axis.set(title=title, xlabel="edit index")
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "by_index.png", dpi=100)
    plt.close(figure)
    written.append("plots/by_index.png")

    # 3. Preservation and latency against the edit index (medians)
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
    axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "preservation.png", dpi=100)
    plt.close(figure)
    written.append("plots/preservation.png")

    figure, axis = plt.subplots(figsize=(5, 4))
    for method in rows:
        axis.plot(*curve(method, "seconds_median"), marker="o", label=method)
    axis.set(title="latency vs layer index", xlabel="edit index (layers below it)", ylabel="median seconds per edit")
    axis.grid(alpha=0.3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "latency.png", dpi=100)
    plt.close(figure)
    written.append("plots/latency.png")
    return written


def plot_long(long_rows: dict[str, list[dict]], long: dict, folder: Path) -> list[str]:
    """Long sessions: background drift with interval bands, latency edit k / edit 1, memory held, per edit index."""
    if not long_rows:
        return []
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for method, method_rows in long_rows.items():
        indexes = sorted(long[method])
        values, bars = _error_bars([long[method][i]["background_psnr"] for i in indexes], PSNR_CEILING)
        line, = axes[0].plot(indexes, values, marker=".", label=method)
        axes[0].fill_between(indexes, values - bars[0], values + bars[1], color=line.get_color(), alpha=0.15)
        seconds = _median_seconds(method_rows)
        if seconds.get(1):
            axes[1].plot(indexes, [seconds[i] / seconds[1] for i in indexes], marker=".", label=method)
        axes[2].plot(indexes, [long[method][i]["session_bytes"] / 1024 for i in indexes], marker=".", label=method)
    axes[0].set(title="background drift (outside all masks so far)", xlabel="edit index",
                ylabel=f"median PSNR vs first background, dB (identical at {PSNR_CEILING:.0f})")
    axes[1].axhline(MQD_COST_GOAL, color="black", linewidth=0.8, linestyle="--")
    axes[1].set(title=f"latency edit k / edit 1 (goal for mqd <= {MQD_COST_GOAL})", xlabel="edit index")
    axes[2].set(title="memory held by the session", xlabel="edit index", ylabel="KiB (layers 0..k)")
    for axis in axes:
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(folder / "long_sessions.png", dpi=100)
    plt.close(figure)
    return ["plots/long_sessions.png"]
