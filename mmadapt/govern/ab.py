"""A/B test of two artifact versions of one recipe on the same eval examples.

Both versions are loaded (:func:`~mmadapt.engine.runner.load_artifact`), predict the
recipe's eval split, and are scored per example with the modality's ``score``. Each
metric's paired difference (B - A) gets a paired-bootstrap 95% confidence interval
(:func:`~mmadapt.engine.stats.paired_bootstrap`) and an exact two-sided sign test. The
verdict, from B's point of view:

* ``better`` / ``worse``: the CI excludes 0 (bootstrap; or p < 1 - level for the sign test)
  on the side where the metric improves (higher is better, except error rates such as WER);
* ``no evidence``: otherwise.

:func:`ab_from_log` runs the same tests on live traffic instead: the feedback scores that
``POST /v1/feedback`` recorded for the requests each version answered (``mmadapt serve`` with a
split). A live request is answered by one version only, so the pairs are made in time order: the
k-th rated request of A with the k-th of B (each pair close in time, so a change in the traffic
over the day moves both sides alike; the larger side's surplus is left out and counted).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.engine.evaluate import eval_examples, score_rows, slice_values
from mmadapt.engine.stats import paired_bootstrap
from mmadapt.engine.versions import current_version, recipe_dir, resolve_version
from mmadapt.errors import ArtifactError, MmadaptError
from mmadapt.govern.livelog import feedback_path, rated_requests
from mmadapt.protocols import Example, get_modality

METHODS = ("bootstrap", "sign")


def sign_test(diffs: Sequence[float]) -> dict[str, float]:
    """Exact two-sided sign test on the non-zero paired differences."""
    pos = sum(1 for d in diffs if d > 0)
    neg = sum(1 for d in diffs if d < 0)
    n = pos + neg
    if n == 0:
        return {"positive": 0, "negative": 0, "p_value": 1.0}
    k = min(pos, neg)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return {"positive": pos, "negative": neg, "p_value": float(min(1.0, 2 * tail))}


@dataclass
class MetricDiff:
    metric: str
    n: int  # paired examples with a value in both versions
    mean_a: float
    mean_b: float
    diff: float  # mean of B - A
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_sign: float
    b_wins: int  # examples where B scores better (in the metric's direction)
    a_wins: int
    higher_is_better: bool
    verdict: str  # better | worse | no evidence  (B compared with A)


@dataclass
class ABResult:
    recipe: str
    a: str
    b: str
    method: str
    level: float
    examples: int
    primary_metric: str
    metrics: list[MetricDiff]
    rows: list[dict[str, Any]] = field(default_factory=list)  # per example: id, a/b outputs and scores
    source: str = "eval"  # eval: the eval split predicted by both; log: live feedback from the serve log
    unpaired: int = 0  # (log) rated requests left without a partner: the larger side's surplus
    slice_by: str | None = None  # eval.slice_by: the same comparison on each slice's examples alone
    slices: dict[str, list[MetricDiff]] = field(default_factory=dict)

    @property
    def primary(self) -> MetricDiff:
        for m in self.metrics:
            if m.metric == self.primary_metric:
                return m
        return self.metrics[0]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("rows")
        return out


def verdict(diff: float, ci: tuple[float, float], p_sign: float, higher_is_better: bool, method: str, level: float) -> str:
    if method == "sign":
        if p_sign >= 1.0 - level or diff == 0:
            return "no evidence"
        improved = diff > 0
    else:
        lo, hi = ci
        if lo <= 0.0 <= hi:
            return "no evidence"
        improved = lo > 0.0
    if not higher_is_better:
        improved = not improved
    return "better" if improved else "worse"


def compare_scores(
    rows_a: list[dict[str, Any]],
    rows_b: list[dict[str, Any]],
    metrics: Sequence[str],
    *,
    lower_is_better: Collection[str] = frozenset(),
    method: str = "bootstrap",
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> list[MetricDiff]:
    """Per-metric paired comparison of two lists of per-example score rows (same order, same examples).

    ``lower_is_better`` names the metrics where a smaller value is better (the modality's
    :attr:`~mmadapt.protocols.Modality.lower_is_better`); every other metric improves upwards.
    """
    if method not in METHODS:
        raise MmadaptError(f"unknown test {method!r}", fix=f"use one of: {', '.join(METHODS)}")
    out = []
    for metric in metrics:
        pairs = [
            (float(ra[metric]), float(rb[metric]))
            for ra, rb in zip(rows_a, rows_b, strict=True)
            if ra.get(metric) is not None and rb.get(metric) is not None
        ]
        if not pairs:
            continue
        a = [p[0] for p in pairs]
        b = [p[1] for p in pairs]
        boot = paired_bootstrap(a, b, resamples=resamples, level=level, seed=seed)
        diffs = [y - x for x, y in pairs]
        sign = sign_test(diffs)
        higher = metric not in lower_is_better
        b_wins = sign["positive"] if higher else sign["negative"]
        a_wins = sign["negative"] if higher else sign["positive"]
        ci = (boot["ci_low"], boot["ci_high"])
        out.append(
            MetricDiff(
                metric=metric,
                n=len(pairs),
                mean_a=sum(a) / len(a),
                mean_b=sum(b) / len(b),
                diff=boot["diff"],
                ci_low=ci[0],
                ci_high=ci[1],
                p_bootstrap=boot["p_value"],
                p_sign=sign["p_value"],
                b_wins=int(b_wins),
                a_wins=int(a_wins),
                higher_is_better=higher,
                verdict=verdict(boot["diff"], ci, sign["p_value"], higher, method, level),
            )
        )
    return out


def _score_version(version_dir: Path, modality, examples: list[Example], metrics, data, progress: bool):
    from mmadapt.engine.runner import load_artifact

    loaded = load_artifact(version_dir)
    if loaded.recipe.modality != modality.name:
        raise ArtifactError(
            f"is a {loaded.recipe.modality} artifact, the recipe is {modality.name}", path=version_dir,
            fix="compare versions of the same recipe",
        )
    predictions = loaded.predictor.predict([e.input for e in examples], progress=progress)
    rows = score_rows(modality, predictions, examples, metrics, data)
    outputs = [p.output if isinstance(p.output, (str, int, float)) else None for p in predictions]
    del loaded, predictions
    gc.collect()
    return rows, outputs


def ab_test(
    recipe,
    a: str,
    b: str,
    *,
    method: str = "bootstrap",
    resamples: int = 2000,
    level: float = 0.95,
    progress: bool = False,
) -> ABResult:
    """Load versions ``a`` and ``b`` of ``recipe``, predict its eval split with both, compare per metric."""
    if method not in METHODS:
        raise MmadaptError(f"unknown test {method!r}", fix=f"use one of: {', '.join(METHODS)}")
    rdir = recipe_dir(recipe.output_dir, recipe.name)
    dir_a, dir_b = resolve_version(rdir, a), resolve_version(rdir, b)
    modality = get_modality(recipe.modality)
    data = modality.load_data(recipe)
    examples = eval_examples(data, recipe)
    metrics = list(recipe.eval.metrics or modality.default_metrics)
    by = recipe.eval.slice_by
    values = slice_values(modality, data, examples, by, path=recipe.source) if by else []
    rows_a, out_a = _score_version(dir_a, modality, examples, metrics, data, progress)
    rows_b, out_b = _score_version(dir_b, modality, examples, metrics, data, progress)
    settings = {"lower_is_better": modality.lower_is_better, "method": method, "resamples": resamples, "level": level,
                "seed": recipe.train.seed}
    diffs = compare_scores(rows_a, rows_b, metrics, **settings)
    slices = {
        value: compare_scores([r for r, v in zip(rows_a, values) if v == value], [r for r, v in zip(rows_b, values) if v == value],
                              metrics, **settings)
        for value in sorted(set(values))
    }
    if not diffs:
        raise MmadaptError(
            "no metric could be scored on both versions", path=recipe.source,
            fix="check the eval split has what the metrics need (e.g. key_fact for fact_accuracy)",
        )
    rows = []
    for i, (ex, ra, rb, oa, ob) in enumerate(zip(examples, rows_a, rows_b, out_a, out_b)):
        row: dict[str, Any] = {"id": ex.id, "output_a": oa, "output_b": ob, **({"slice": values[i]} if by else {})}
        for m in metrics:
            row[f"{m}_a"], row[f"{m}_b"] = ra.get(m), rb.get(m)
        rows.append(row)
    primary = modality.primary_metric if modality.primary_metric in metrics else diffs[0].metric
    return ABResult(recipe.name, dir_a.name, dir_b.name, method, level, len(examples), primary, diffs, rows,
                    slice_by=by, slices=slices)


FEEDBACK_METRIC = "feedback"  # the score clients send to /v1/feedback; higher is better


def ab_from_log(
    recipe,
    a: str | None = None,
    b: str | None = None,
    *,
    method: str = "bootstrap",
    resamples: int = 2000,
    level: float = 0.95,
) -> ABResult:
    """A/B test of two served versions on live feedback (``serve/feedback.jsonl`` joined with
    ``serve/requests.jsonl``). Without ``a``/``b``: the two versions that have rated requests, the
    current one (or the older) as A."""
    if method not in METHODS:
        raise MmadaptError(f"unknown test {method!r}", fix=f"use one of: {', '.join(METHODS)}")
    rdir = recipe_dir(recipe.output_dir, recipe.name)
    joined = rated_requests(rdir)
    by_version: dict[str, list] = {}
    for r in joined.rated:
        by_version.setdefault(r.version, []).append(r)
    rated = sorted(by_version)
    va = resolve_version(rdir, a).name if a is not None else None
    vb = resolve_version(rdir, b).name if b is not None else None
    if va is None or vb is None:
        if len(rated) != 2 or not {va, vb} - {None} <= set(rated):
            raise MmadaptError(
                f"the serve log has feedback for {len(rated)} version(s) ({', '.join(rated) or 'none'}); which two to test?",
                path=feedback_path(rdir), fix="name them: --a vNNNN --b vNNNN (clients send POST /v1/feedback {id, score})",
            )
        if va is None and vb is None:
            va = current_version(rdir) if current_version(rdir) in rated else rated[0]
        va = va or next(v for v in rated if v != vb)
        vb = vb or next(v for v in rated if v != va)
    if va == vb:
        raise MmadaptError(f"A and B are both {va}", fix="name two different versions")
    side_a, side_b = by_version.get(va, []), by_version.get(vb, [])
    n = min(len(side_a), len(side_b))
    if n < 2:
        raise MmadaptError(
            f"{len(side_a)} rated requests of {va} and {len(side_b)} of {vb} in the serve log; the test needs at least 2 of each",
            path=feedback_path(rdir), fix="serve both (--split) and send POST /v1/feedback {id, score} for their answers",
        )
    rows_a = [{FEEDBACK_METRIC: r.score} for r in side_a[:n]]
    rows_b = [{FEEDBACK_METRIC: r.score} for r in side_b[:n]]
    diffs = compare_scores(rows_a, rows_b, [FEEDBACK_METRIC], method=method, resamples=resamples, level=level, seed=recipe.train.seed)
    rows = [{"id_a": ra.id, "id_b": rb.id, f"{FEEDBACK_METRIC}_a": ra.score, f"{FEEDBACK_METRIC}_b": rb.score}
            for ra, rb in zip(side_a[:n], side_b[:n])]
    return ABResult(recipe.name, va, vb, method, level, n, FEEDBACK_METRIC, diffs, rows, source="log",
                    unpaired=len(side_a) + len(side_b) - 2 * n)
