"""Evaluate a predictor on a recipe's eval split: quality metrics with CIs, latency.

Metrics are the modality's (``Modality.score`` / ``aggregate``) and the metrics a user brings,
``package.module:function`` (:mod:`mmadapt.evalspec`): called per example as ``fn(output, example)``,
their values are columns of the same score rows and their corpus figure is the mean, so
bootstrap CIs, ``ab``, ``compare`` and suites treat both alike. Nothing here asks which modality.

Slices (``eval.slice_by``): the rows are grouped by a metadata field of the eval examples, or a field
the modality derives (:meth:`~mmadapt.protocols.Modality.derived_slices`), and every metric is
aggregated per group with its own bootstrap CI (:func:`slice_metrics`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmadapt.config import suggest
from mmadapt.engine.meters import Stopwatch, latency_percentiles
from mmadapt.errors import MmadaptError, RecipeError
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
    slices: dict[str, Any] = field(default_factory=dict)  # {"by": field, "groups": {value: {n, metrics, ci95}}} or {}


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


def slice_values(
    modality: Modality, data: DataBundle, examples: list[Example], by: str, *,
    path: Any = None, error: type[MmadaptError] = RecipeError, key: str = "eval.slice_by",
) -> list[str]:
    """The slice of each example: the modality's derived field ``by``, else ``example.meta[by]`` (as text).

    A field that some example lacks, or that holds a list or mapping, is one ``error`` line naming
    ``key`` and the fields every example has."""
    derived = modality.derived_slices(data)
    if by in derived:
        of = dict(zip((e.id for e in data.eval), derived[by], strict=True))
        return [of[e.id] for e in examples]
    lacking = [e.id for e in examples if by not in e.meta]
    if lacking or not examples:
        common = sorted(set.intersection(*(set(e.meta) for e in examples))) if examples else []
        choices = [*common, *derived]
        raise error(
            f"{key}: {by!r} is not a metadata field of every eval example ({len(lacking)} of {len(examples)} lack it"
            + (f", e.g. {lacking[0]})" if lacking else ")") + (suggest(by, choices) if choices else ""),
            path=path, fix=f"use one of: {', '.join(choices)}" if choices else "add the field to every eval example",
        )
    odd = next((e for e in examples if isinstance(e.meta[by], (list, dict))), None)
    if odd is not None:
        raise error(f"{key}: {by!r} of {odd.id} is a {type(odd.meta[by]).__name__}, not one value", path=path,
                    fix="slice by a field that holds one string or number per example")
    return [str(e.meta[by]) for e in examples]


def slice_metrics(
    modality: Modality, rows: list[dict[str, Any]], values: list[str], metrics: list[str], resamples: int, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per slice value (sorted): ``n``, the corpus ``metrics`` and their bootstrap ``ci95``, as :func:`aggregate`."""
    out = {}
    for value in sorted(set(values)):
        picked = [row for row, v in zip(rows, values, strict=True) if v == value]
        means, cis = aggregate(modality, picked, metrics, resamples, seed)
        out[value] = {"n": len(picked), "metrics": means, "ci95": {k: list(v) for k, v in cis.items()}}
    return out


def eval_examples(data: DataBundle, recipe) -> list[Example]:
    """The eval examples a recipe scores (``eval.limit``: the first N)."""
    return data.eval[: recipe.eval.limit] if recipe.eval.limit else list(data.eval)


def check_slices(modality: Modality, data: DataBundle, recipe) -> None:
    """Raise the one-line error of a bad ``eval.slice_by`` before anything trains."""
    if recipe.eval.slice_by:
        slice_values(modality, data, eval_examples(data, recipe), recipe.eval.slice_by, path=recipe.source)


def live_scorer(modality: Modality, stack: Any, data: DataBundle, recipe) -> dict[str, Any]:
    """What a run's :class:`~mmadapt.protocols.FitContext` needs to score while training (``train.eval_every``):
    ``evaluate`` (the eval split's corpus metrics for the stack as it is at that moment), the metric
    ``keep: best`` ranks by (the modality's primary one when measured, else the first) and its direction."""
    examples = eval_examples(data, recipe)
    metrics = list(recipe.eval.metrics or modality.default_metrics)
    primary = modality.primary_metric if modality.primary_metric in metrics else metrics[0]

    def score() -> dict[str, float]:
        predictions = modality.predictor(stack).predict([e.input for e in examples], progress=False)
        return corpus(modality, score_rows(modality, predictions, examples, metrics, data), metrics)

    return {"evaluate": score, "primary_metric": primary, "lower_is_better": primary in modality.lower_is_better}


def evaluate(modality: Modality, predictor: Predictor, data: DataBundle, recipe, *, progress: bool = True) -> EvalResult:
    """Predict every eval example (batched), score it, and time ``latency_samples`` inputs one by one."""
    examples = eval_examples(data, recipe)
    metrics = list(recipe.eval.metrics or modality.default_metrics)
    if recipe.guard is not None:  # what the guard costs: in every report of a guarded recipe
        metrics += [m for m in REPORT_METRICS if m not in metrics]
    by = recipe.eval.slice_by
    values = slice_values(modality, data, examples, by, path=recipe.source) if by else []
    with Stopwatch() as watch:
        predictions = predictor.predict([e.input for e in examples], progress=progress)
    rows = score_rows(modality, predictions, examples, metrics, data)
    means, cis = aggregate(modality, rows, metrics, recipe.eval.bootstrap, seed=recipe.train.seed)
    slices: dict[str, Any] = {}
    if by:
        for row, value in zip(rows, values, strict=True):
            row["slice"] = value
        slices = {"by": by, "groups": slice_metrics(modality, rows, values, metrics, recipe.eval.bootstrap, recipe.train.seed)}

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
    return EvalResult(means, cis, rows, predictions, examples, costs, slices)
