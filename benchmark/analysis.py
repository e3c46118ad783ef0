"""From per-edit rows to the numbers results.json states: rates and medians with intervals, paired tests
between methods, effect sizes per edit index, and the long-session curves.

Pure functions of the rows `metrics.edit_rows` makes (no files, no clocks), so the merged results are
the same however the benchmark was split between processes. Statistics: `benchmark.stats`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from benchmark import metrics, stats

# The metrics the paired tests compare: name -> (kind, how a row gives its value(s)).
# "binary": one bool per edit (or per earlier object); "number": one float per edit (PSNR capped, see stats).
BINARY, NUMBER = "binary", "number"
TESTED = ("success", "earlier_kept", "background_in_mask_psnr", "seam")


# ----------------------------------------------------------------------------------------- per-edit values
def _success(row):
    return None if row["shape_found"] is None else [((row["scene"], row["index"]), bool(row["shape_found"]))]


def _earlier(field: str):
    def values(row):
        if row["earlier"] is None:
            return None
        return [((row["scene"], row["index"], e["layer"]), bool(e[field])) for e in row["earlier"]
                if e[field] is not None]
    return values


def _number(field: str, transform: Callable = float):
    def values(row):
        return None if row[field] is None else [((row["scene"], row["index"]), transform(row[field]))]
    return values


# name -> (kind, statistic for the interval, values of a row: [(pairing key, value)] or None)
MEASURES = {
    "success": (BINARY, np.mean, _success),
    "earlier_kept": (BINARY, np.mean, _earlier("kept")),
    "earlier_occluded": (BINARY, np.mean, _earlier("occluded")),
    "background_in_mask_psnr": (NUMBER, np.median, _number("background_in_mask_psnr")),
    "seam": (NUMBER, np.median, _number("seam")),
}


def _by_group(rows: list[dict], measure: str) -> dict[str, list[float]]:
    _, _, values = MEASURES[measure]
    groups: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for _, value in values(row) or []:
            groups[row["group"]].append(float(value))
    return dict(groups)


def _keyed(rows: list[dict], measure: str) -> dict[tuple, tuple[str, float]]:
    """Pairing key -> (group, value) for one method's rows."""
    _, _, values = MEASURES[measure]
    return {key: (row["group"], value) for row in rows for key, value in values(row) or []}


# ----------------------------------------------------------------------------------------- summaries
def summary(rows: list[dict]) -> dict:
    """metrics.summarise's point values, and for each MEASURES key {value, ci95, n}: the rate (share) or
    median over every edit of every scene, with its 95% bootstrap interval over scenes."""
    flat = metrics.summarise(rows)
    for measure, (_, statistic, _) in MEASURES.items():
        flat[measure] = stats.estimate(_by_group(rows, measure), statistic)
    return flat


def by_index(rows: list[dict], measure: str) -> dict[int, dict]:
    """{edit index: {value, ci95, n}} of one measure."""
    statistic = MEASURES[measure][1]
    indexes = sorted({row["index"] for row in rows})
    return {i: stats.estimate(_by_group([r for r in rows if r["index"] == i], measure), statistic) for i in indexes}


# ----------------------------------------------------------------------------------------- paired comparisons
def compare(rows: dict[str, list[dict]], comparisons) -> list[dict]:
    """One entry per (method, reference, TESTED measure) whose methods both ran: the paired test, the
    effect (mean difference of paired rates, in points of share, or median paired difference), its
    interval over scenes, Cohen's h for rates, and Holm's adjusted p over every entry."""
    entries = []
    for method, reference in comparisons:
        if method not in rows or reference not in rows:
            continue
        for measure in TESTED:
            entry = _paired(rows[method], rows[reference], measure)
            if entry is not None:
                entries.append({"method": method, "reference": reference, "metric": measure, **entry})
    for entry, adjusted in zip(entries, stats.holm([e["p"] for e in entries])):
        entry["p_holm"] = adjusted
        entry["significant"] = adjusted < 0.05
    return entries


def _paired(method_rows: list[dict], reference_rows: list[dict], measure: str) -> dict | None:
    kind, statistic, _ = MEASURES[measure]
    a, b = _keyed(method_rows, measure), _keyed(reference_rows, measure)
    keys = sorted(set(a) & set(b), key=repr)
    if not keys:
        return None
    transform = stats.cap_psnr if measure == "background_in_mask_psnr" else float
    pairs = [(transform(a[k][1]), transform(b[k][1])) for k in keys]
    by_group: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, pair in zip(keys, pairs):
        by_group[a[key][0]].append(pair)
    if kind == BINARY:
        test = stats.mcnemar([(bool(x), bool(y)) for x, y in pairs])
        rate_a, rate_b = float(np.mean([x for x, _ in pairs])), float(np.mean([y for _, y in pairs]))
        effect = stats.paired_difference(by_group, np.mean)
        return {**test, "method_value": rate_a, "reference_value": rate_b, "difference": effect["value"],
                "ci95": effect["ci95"], "cohens_h": stats.cohens_h(rate_a, rate_b)}
    test = stats.wilcoxon(pairs)
    effect = stats.paired_difference(by_group, statistic)
    return {**test, "method_value": float(np.median([x for x, _ in pairs])),
            "reference_value": float(np.median([y for _, y in pairs])), "difference": effect["value"],
            "ci95": effect["ci95"]}


def effects_by_index(rows: dict[str, list[dict]], comparisons, measures=("success", "background_in_mask_psnr")
                     ) -> list[dict]:
    """Per comparison, per edit index, per measure: the paired effect (as in `compare`, without tests)."""
    effects = []
    for method, reference in comparisons:
        if method not in rows or reference not in rows:
            continue
        indexes = sorted({row["index"] for row in rows[method]})
        for index in indexes:
            mine = [r for r in rows[method] if r["index"] == index]
            theirs = [r for r in rows[reference] if r["index"] == index]
            for measure in measures:
                entry = _paired(mine, theirs, measure)
                if entry is not None:
                    effects.append({"method": method, "reference": reference, "index": index, "metric": measure,
                                    "n": entry["n"], "difference": entry["difference"], "ci95": entry["ci95"],
                                    "cohens_h": entry.get("cohens_h")})
    return effects


# ----------------------------------------------------------------------------------------- long sessions
def long_sessions(rows: dict[str, list[dict]], background_bytes: dict[str, list[int]]) -> dict:
    """Per method, per edit index k: background drift (median PSNR of the image after edit k vs the
    background, outside every mask so far; interval over sessions), memory bytes of layer k (mean) and
    held by the session after edit k (layers 0..k, mean). `background_bytes[method]`: layer 0's bytes per
    session."""
    result = {}
    for method, method_rows in rows.items():
        per_index = {}
        base = float(np.mean(background_bytes.get(method) or [0]))
        cumulative = base
        for index in sorted({r["index"] for r in method_rows}):
            at = [r for r in method_rows if r["index"] == index]
            groups: dict[str, list[float]] = defaultdict(list)
            for r in at:
                if r["background_psnr"] is not None:
                    groups[r["group"]].append(r["background_psnr"])
            layer_bytes = float(np.mean([r["memory_bytes"] for r in at]))
            cumulative += layer_bytes
            per_index[index] = {"background_psnr": stats.estimate(dict(groups), np.median),
                                "layer_bytes": layer_bytes, "session_bytes": cumulative}
        result[method] = per_index
    return result
