"""Evaluate a predictor on a recipe's eval split: quality metrics with CIs, latency."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mmadapt.core.meters import Stopwatch, latency_percentiles
from mmadapt.core.stats import bootstrap_ci
from mmadapt.core.strategy import DataBundle, Modality, Prediction, Predictor


@dataclass
class EvalResult:
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    rows: list[dict[str, Any]]
    predictions: list[Prediction]
    costs: dict[str, Any] = field(default_factory=dict)


def aggregate(rows: list[dict[str, Any]], metrics: list[str], resamples: int, seed: int = 0) -> tuple[dict, dict]:
    means, cis = {}, {}
    for metric in metrics:
        values = [r[metric] for r in rows if r.get(metric) is not None]
        if not values:
            continue
        means[metric] = round(float(sum(values) / len(values)), 4)
        lo, hi = bootstrap_ci(values, resamples=resamples, seed=seed)
        cis[metric] = (round(lo, 4), round(hi, 4))
    return means, cis


def evaluate(modality: Modality, predictor: Predictor, data: DataBundle, recipe, *, progress: bool = True) -> EvalResult:
    """Predict every eval example (batched), score it, and time ``latency_samples`` inputs one by one."""
    examples = data.eval[: recipe.eval.limit] if recipe.eval.limit else list(data.eval)
    metrics = list(recipe.eval.metrics or modality.default_metrics)
    with Stopwatch() as watch:
        predictions = predictor.predict([e.input for e in examples], progress=progress)
    rows = modality.score(predictions, examples, metrics, data)
    means, cis = aggregate(rows, metrics, recipe.eval.bootstrap, seed=recipe.train.seed)

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
    return EvalResult(means, cis, rows, predictions, costs)
