"""Confidence intervals and paired tests over per-example scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    if resamples <= 0 or arr.size == 1:
        mean = float(arr.mean())
        return (mean, mean)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean of ``b - a`` over paired examples with its bootstrap CI and a two-sided p-value."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("paired scores need the same, non-zero number of examples")
    diff = y - x
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha))
    # two-sided p: how often the resampled mean falls on the other side of zero
    p = float(min(1.0, 2.0 * min((means <= 0).mean(), (means >= 0).mean()))) if diff.any() else 1.0
    return {"diff": float(diff.mean()), "ci_low": lo, "ci_high": hi, "p_value": p}
