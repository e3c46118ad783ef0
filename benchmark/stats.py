"""The statistics the report states: intervals over scenes, paired tests, a correction for many tests.

Pure functions of plain numbers, deterministic (a fixed resampling seed), so results.json is the same
however many processes ran the benchmark.

- Intervals: percentile bootstrap over scenes (the plan shared by a scene's session seeds). A scene's
  edits and seeds are not independent of each other, so whole scenes are resampled.
- Paired tests: every method edits the same scenes with the same seeds, so two methods' verdicts on
  one edit form a pair. Binary outcomes (success, an earlier object kept): exact McNemar test on the
  discordant pairs. Numbers (PSNR, seam): Wilcoxon signed-rank test on the paired differences.
  Both treat pairs as independent; the bootstrap interval of the difference, which resamples scenes,
  is the check on that.
- Many comparisons: Holm's step-down correction over every test in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 2000  # bootstrap resamples; percentile intervals want >= 1000 (Efron & Tibshirani)
RESAMPLE_SEED = 0
LEVEL = 0.95
# Bit-identical is infinite PSNR; a paired difference needs a number: identical counts as this many dB
# (above anything an 8-bit change can score: one level everywhere is 48.1 dB).
PSNR_CAP = 60.0


def cap_psnr(value: float | None) -> float | None:
    return None if value is None else min(float(value), PSNR_CAP)


# ----------------------------------------------------------------------------------------- intervals
def bootstrap_ci(groups: Sequence[Sequence[float]], statistic: Callable[[np.ndarray], float] = np.mean,
                 resamples: int = RESAMPLES, seed: int = RESAMPLE_SEED) -> tuple[float, float] | None:
    """95% percentile interval of `statistic` over the pooled values when whole groups (scenes) are
    drawn with replacement. None when there is no value; a single group gives a zero-width interval."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    if statistic is np.mean:  # the common case (rates), vectorised: sums and counts per group
        sums = np.array([g.sum() for g in groups])
        counts = np.array([len(g) for g in groups])
        values = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    else:
        values = np.array([statistic(np.concatenate([groups[k] for k in row])) for row in draws])
    tail = (1 - LEVEL) / 2 * 100
    # order statistics (no interpolation), so a PSNR interval with bit-identical (inf) ends stays inf, not nan
    low, high = np.percentile(values, [tail, 100 - tail], method="inverted_cdf")
    return float(low), float(high)


def estimate(values_by_group: dict[str, list[float]], statistic: Callable[[np.ndarray], float] = np.mean) -> dict:
    """{value, ci95, n}: the statistic over all values, its bootstrap interval over groups, the value count."""
    groups = [values_by_group[k] for k in sorted(values_by_group)]
    pooled = [v for g in groups for v in g]
    if not pooled:
        return {"value": None, "ci95": None, "n": 0}
    interval = bootstrap_ci(groups, statistic)
    return {"value": float(statistic(np.asarray(pooled, dtype=np.float64))), "ci95": list(interval),
            "n": len(pooled)}


# ----------------------------------------------------------------------------------------- paired tests
def mcnemar(pairs: Sequence[tuple[bool, bool]]) -> dict:
    """Exact McNemar test of paired binary outcomes (a, b): two-sided binomial test of the discordant
    pairs, b_only vs a_only, against 50/50. p = 1 when no pair is discordant."""
    a_only = sum(1 for a, b in pairs if a and not b)
    b_only = sum(1 for a, b in pairs if b and not a)
    discordant = a_only + b_only
    p = 1.0 if discordant == 0 else float(scipy_stats.binomtest(a_only, discordant, 0.5).pvalue)
    return {"test": "mcnemar", "n": len(pairs), "a_only": a_only, "b_only": b_only, "p": min(1.0, p)}


def wilcoxon(pairs: Sequence[tuple[float, float]]) -> dict:
    """Wilcoxon signed-rank test of paired numbers (a, b) on a - b; zero differences are dropped
    (Wilcoxon's own rule). p = 1 when every pair ties."""
    differences = np.array([a - b for a, b in pairs], dtype=np.float64)
    nonzero = differences[differences != 0]
    p = 1.0 if nonzero.size == 0 else float(scipy_stats.wilcoxon(nonzero).pvalue)
    return {"test": "wilcoxon", "n": len(pairs), "nonzero": int(nonzero.size), "p": p}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the k-th smallest p is multiplied by
    (m - k + 1), made monotone, and capped at 1. Rejecting adjusted p < 0.05 controls the family-wise
    error rate at 5% over all m tests."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


# ----------------------------------------------------------------------------------------- effect sizes
def cohens_h(p1: float | None, p2: float | None) -> float | None:
    """Cohen's h between two rates: 2 asin(sqrt p1) - 2 asin(sqrt p2); 0.2 small, 0.5 medium, 0.8 large."""
    if p1 is None or p2 is None:
        return None
    return 2 * math.asin(math.sqrt(p1)) - 2 * math.asin(math.sqrt(p2))


def paired_difference(pairs_by_group: dict[str, list[tuple[float, float]]],
                      statistic: Callable[[np.ndarray], float] = np.mean) -> dict:
    """{value, ci95, n} of `statistic` over the paired differences a - b, the interval resampling groups."""
    return estimate({k: [a - b for a, b in v] for k, v in pairs_by_group.items()}, statistic)
