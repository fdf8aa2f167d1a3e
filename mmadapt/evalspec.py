"""What an ``eval`` section and an evaluation suite name, checked before anything loads.

* **Metrics.** A metric is a name the modality declares (``fact_accuracy``, ``wer`` ...) or a
  metric a user brings, written ``package.module:function``: ``function(output, example) -> float
  | None`` is called once per example (``output`` is the prediction's output — a text answer, a
  transcript, a PIL image; ``example`` the :class:`mmadapt.protocols.Example` with ``input``,
  ``reference`` and ``meta``); ``None`` leaves the example out. Its corpus figure is the mean of
  the per-example values, with a bootstrap CI like the built-ins, and **higher is better**.
  The module is imported from ``sys.path`` (the current folder, an installed package).
  The guard's metrics (``refusal_rate``, ``escalation_rate``, ``redactions``, ``stopped_rate``,
  ``caught_rate``, ``planted_redacted``: :func:`mmadapt.guard.apply.guard_metric`) are valid in any modality;
  the rates of refusal, escalation and stopping are lower-is-better (a suite bar on them is a maximum).
* **Suites.** ``eval/<name>.yaml``: ``name``, ``modality``, ``sets`` (held-out files or folders
  in the modality's eval format, relative to the suite file), ``metrics`` (default: the
  modality's), ``bars`` (metric -> the value a version must reach: a minimum, or a maximum for
  the modality's lower-is-better metrics such as WER), ``description``, ``slice_by`` (metrics per
  value of a metadata field of the sets' examples, each with its CI; bars hold on the whole set).

Errors are one line with the key path and a did-you-mean, exit code 2, like a recipe's.
This module sits below :mod:`mmadapt.recipe` (which calls :func:`check_eval`) and
:mod:`mmadapt.govern.suites` (which runs suites).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from mmadapt.config import StrictModel, read_strict_yaml, suggest, validation_messages
from mmadapt.errors import RecipeError, SuiteError
from mmadapt.guard.config import GUARD_LOWER_IS_BETTER, GUARD_METRICS
from mmadapt.protocols import Modality, get_modality, modality_names

USER_METRIC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
MAX_SUITE_BYTES = 1 << 20


# ---------------------------------------------------------------- metrics


def is_user_metric(name: str) -> bool:
    """A metric written ``package.module:function`` (a modality's metric names have no colon)."""
    return ":" in name


def load_user_metric(path: str) -> Callable[[Any, Any], float | None]:
    """Import ``package.module:function``; one-line :class:`RecipeError` if it does not import or is not callable."""
    if not USER_METRIC.match(path):
        raise RecipeError(f"metric {path!r} is not package.module:function", fix="e.g. mypkg.metrics:polite")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure to import user code is the same one line
        first = (str(exc).splitlines() or [""])[0][:160]
        raise RecipeError(
            f"metric {path!r}: module {module_name!r} does not import ({type(exc).__name__}: {first})",
            fix="install it or run from the folder that holds it (it must be on sys.path)",
        ) from None
    fn = vars(module).get(attr)
    if fn is None or not callable(fn):
        what = "names no callable" if fn is not None else "has no such name"
        raise RecipeError(f"metric {path!r}: {module_name} {what} {attr!r}", fix="name a function fn(output, example) -> float | None")
    return fn


def check_metrics(names: Sequence[str], modality: Modality, where: str) -> list[str]:
    """One message per metric that is neither the modality's nor an importable user metric."""
    errors = []
    for i, metric in enumerate(names):
        if is_user_metric(metric):
            try:
                load_user_metric(metric)
            except RecipeError as exc:
                errors.append(f"{where}[{i}]: {exc.message}")
        elif metric not in modality.metrics and metric not in GUARD_METRICS:
            errors.append(f"{where}[{i}]: unknown metric {metric!r}{suggest(metric, modality.metrics)}")
    return errors


# ---------------------------------------------------------------- suites


class SuiteFile(StrictModel):
    """The schema of a suite YAML file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    description: str = ""
    modality: str = Field(description="a registered modality; targets of another modality are refused")
    sets: list[str] = Field(min_length=1, description="held-out sets in the modality's eval format, relative to the suite file")
    metrics: list[str] | None = Field(None, description="default: the modality's default metrics")
    bars: dict[str, float] = Field(
        default_factory=dict, description="metric -> minimum (maximum for the modality's lower-is-better metrics)"
    )
    recipes: list[str] | None = Field(
        None, description="names of the recipes `eval --all` holds to this suite; default: every recipe of its modality"
    )
    slice_by: str | None = Field(None, description="a metadata field of every set's examples (or one the modality derives): metrics per slice")


@dataclass
class Suite:
    """A validated suite: its sets as absolute paths, its metrics resolved."""

    name: str
    modality: str
    sets: list[Path]
    metrics: list[str]
    bars: dict[str, float]
    source: Path
    description: str = ""
    lower_is_better: frozenset[str] = field(default_factory=frozenset)
    recipes: frozenset[str] | None = None  # eval --all: only these recipe names (None: every recipe of the modality)
    slice_by: str | None = None

    def check(self, metrics: Mapping[str, Any]) -> list[str]:
        """The bars ``metrics`` miss, e.g. ``'fact_accuracy 0.10 < 0.30'`` or ``'wer 0.21 > 0.15'``."""
        failures = []
        for metric, bar in self.bars.items():
            value = metrics.get(metric)
            if value is None:
                failures.append(f"{metric} not measured (bar {bar:.2f})")
            elif metric in self.lower_is_better and float(value) > bar:
                failures.append(f"{metric} {float(value):.2f} > {bar:.2f}")
            elif metric not in self.lower_is_better and float(value) < bar:
                failures.append(f"{metric} {float(value):.2f} < {bar:.2f}")
        return failures

    def bar_text(self, metric: str) -> str:
        return f"{'<=' if metric in self.lower_is_better else '>='} {self.bars[metric]:.2f}"


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file; every problem in one :class:`SuiteError` line."""
    path = Path(path)
    raw = _read_yaml(path)
    if not isinstance(raw, dict):
        raise SuiteError(f"a suite is a mapping of keys, got {type(raw).__name__}", path=path, fix="start from a suite in eval/")
    try:
        top = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError("; ".join(validation_messages(exc, SuiteFile, ())), path=path) from None
    if top.modality not in modality_names():
        raise SuiteError(f"modality: unknown modality {top.modality!r}{suggest(top.modality, modality_names())}", path=path)
    modality = get_modality(top.modality)
    errors: list[str] = []
    metrics = list(top.metrics or modality.default_metrics)
    errors += check_metrics(metrics, modality, "metrics")
    for metric in top.bars:
        if metric not in metrics:
            errors.append(f"bars.{metric}: not among the suite's metrics{suggest(metric, metrics)}")
    sets = []
    for i, value in enumerate(top.sets):
        found = (path.parent / value).resolve()
        if not found.exists():
            errors.append(f"sets[{i}]: {value!r} does not exist (sets are relative to the suite file)")
        sets.append(found)
    if errors:
        raise SuiteError("; ".join(errors), path=path)
    return Suite(top.name, top.modality, sets, metrics, dict(top.bars), path, top.description,
                 frozenset(modality.lower_is_better) | GUARD_LOWER_IS_BETTER,
                 recipes=None if top.recipes is None else frozenset(top.recipes), slice_by=top.slice_by)


def find_suite(value: str, source: str | Path | None) -> Path | None:
    """A suite path as a recipe writes it: absolute, or relative to the current folder or the recipe's folder and its parents."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    roots = [Path.cwd()]
    if source is not None:
        here = Path(source).resolve().parent
        roots += [here, *here.parents]
    return next(((root / p).resolve() for root in roots if (root / p).is_file()), None)


def check_eval(section: Any, modality: Modality, source: str | Path | None) -> list[str]:
    """The problems of a recipe's ``eval`` section (an :class:`~mmadapt.config.EvalConfig`): metrics, bars, suites."""
    errors = check_metrics(section.metrics or [], modality, "eval.metrics")
    measured = set(section.metrics or modality.default_metrics)
    for metric in section.min:
        if is_user_metric(metric):
            if metric not in measured:
                errors.append(f"eval.min.{metric}: a user metric must also be listed in eval.metrics")
        elif metric not in modality.metrics:
            errors.append(f"eval.min.{metric}: unknown metric{suggest(metric, modality.metrics)}")
    for i, value in enumerate(section.suites):
        found = find_suite(value, source)
        if found is None:
            errors.append(f"eval.suites[{i}]: {value!r} does not exist (read from the current folder or the recipe's folder and its parents)")
            continue
        try:
            suite = load_suite(found)
        except SuiteError as exc:
            errors.append(f"eval.suites[{i}]: {exc}")
            continue
        if suite.modality != modality.name:
            errors.append(f"eval.suites[{i}]: {value} is a {suite.modality} suite, the recipe is {modality.name}")
    return errors


# ---------------------------------------------------------------- reading (as recipe.py reads recipes)


def _read_yaml(path: Path) -> Any:
    return read_strict_yaml(path, what="suite", error=SuiteError, fix_missing="pass a suite YAML file, e.g. eval/zentrix-regression.yaml",
                            max_bytes=MAX_SUITE_BYTES)
