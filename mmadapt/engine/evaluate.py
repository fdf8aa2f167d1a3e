"""Evaluate a predictor on a recipe's eval split: quality metrics with CIs, latency.

Metrics are the modality's (``Modality.score`` / ``aggregate``) and the metrics a user brings,
``package.module:function`` (:mod:`mmadapt.evalspec`): called per example as ``fn(output, example)``,
their values are columns of the same score rows and their corpus figure is the mean, so
bootstrap CIs, ``ab``, ``compare`` and suites treat both alike. Nothing here asks which modality."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmadapt.engine.meters import Stopwatch, latency_percentiles
from mmadapt.evalspec import is_user_metric, load_user_metric
from mmadapt.guard.apply import guard_metric
from mmadapt.guard.config import GUARD_METRICS, REPORT_METRICS
from mmadapt.protocols import DataBundle, Example, Modality, Prediction, Predictor


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    rows: list[dict[str, Any]]
    predictions: list[Prediction]
    examples: list[Example]  # the eval examples, in the order of rows and predictions
    costs: dict[str, Any] = field(default_factory=dict)


def score_rows(
    modality: Modality, predictions: list[Prediction], examples: list[Example], metrics: list[str], data: DataBundle
) -> list[dict[str, Any]]:
    """One row per example: the modality's metrics, then each user metric's ``fn(output, example)``,
    then the guard's metrics asked for (:data:`~mmadapt.guard.apply.GUARD_METRICS`, from each prediction's guard outcome)."""
    rows = modality.score(predictions, examples, [m for m in metrics if not _row_mean(m)], data)
    for metric in (m for m in metrics if m in GUARD_METRICS):
        for row, prediction, example in zip(rows, predictions, examples, strict=True):
            row[metric] = guard_metric(metric, prediction, example)
    for metric in (m for m in metrics if is_user_metric(m)):
        fn = load_user_metric(metric)
        for row, prediction, example in zip(rows, predictions, examples, strict=True):
            value = fn(prediction.output, example)
            row[metric] = None if value is None else float(value)
    return rows


def _row_mean(metric: str) -> bool:
    """Metrics whose corpus figure is the mean of their per-example values, whatever the modality."""
    return is_user_metric(metric) or metric in GUARD_METRICS


def corpus(modality: Modality, rows: list[dict[str, Any]], metrics: list[str]) -> dict[str, float]:
    """Corpus figures: the modality's aggregate of its metrics; the mean of each user and guard metric."""
    out = dict(modality.aggregate(rows, [m for m in metrics if not _row_mean(m)]))
    for metric in (m for m in metrics if _row_mean(m)):
        values = [r[metric] for r in rows if r.get(metric) is not None]
        if values:
            out[metric] = float(sum(values) / len(values))
    return out


def aggregate(modality: Modality, rows: list[dict[str, Any]], metrics: list[str], resamples: int, seed: int = 0) -> tuple[dict, dict]:
    """The corpus metrics and percentile-bootstrap 95% CIs (rows resampled with replacement)."""
    means = {k: round(v, 4) for k, v in corpus(modality, rows, metrics).items() if v is not None}
    cis: dict[str, tuple[float, float]] = {}
    if not rows:
        return means, cis
    if resamples <= 0 or len(rows) == 1:
        return means, {k: (v, v) for k, v in means.items()}
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in means}
    for _ in range(resamples):
        picked = [rows[i] for i in rng.integers(0, len(rows), size=len(rows))]
        for k, v in corpus(modality, picked, metrics).items():
            if k in samples and v is not None:
                samples[k].append(v)
    for k, values in samples.items():
        if values:
            cis[k] = (round(float(np.quantile(values, 0.025)), 4), round(float(np.quantile(values, 0.975)), 4))
    return means, cis


def evaluate(modality: Modality, predictor: Predictor, data: DataBundle, recipe, *, progress: bool = True) -> EvalResult:
    """Predict every eval example (batched), score it, and time ``latency_samples`` inputs one by one."""
    examples = data.eval[: recipe.eval.limit] if recipe.eval.limit else list(data.eval)
    metrics = list(recipe.eval.metrics or modality.default_metrics)
    if recipe.guard is not None:  # what the guard costs: in every report of a guarded recipe
        metrics += [m for m in REPORT_METRICS if m not in metrics]
    with Stopwatch() as watch:
        predictions = predictor.predict([e.input for e in examples], progress=progress)
    rows = score_rows(modality, predictions, examples, metrics, data)
    means, cis = aggregate(modality, rows, metrics, recipe.eval.bootstrap, seed=recipe.train.seed)

    latencies = []
    for example in examples[: recipe.eval.latency_samples]:
        start = time.perf_counter()
        predictor.predict([example.input], progress=False)
        latencies.append(time.perf_counter() - start)
    costs = {
        "eval_seconds": round(watch.seconds, 3),
        "eval_examples": len(examples),
        **latency_percentiles(latencies),
    }
    return EvalResult(means, cis, rows, predictions, examples, costs)
