"""Evaluation suites: score versions on held-out sets and hold them to the suite's bars.

A suite (``eval/<name>.yaml``, schema in :mod:`mmadapt.evalspec`) names a modality, one or more
held-out sets in that modality's eval format, metrics and bars. :func:`run_suite` loads each
target version (:func:`~mmadapt.engine.runner.load_artifact`), feeds each set to the modality as
the target recipe's eval split (as ``drift`` reads new inputs; the recipe's other data — knowledge
base, vocabulary, palette — stays its own), scores it with the same code as a run
(:func:`~mmadapt.engine.evaluate.score_rows`, bootstrap CIs) and checks every bar on every set.
With two or more targets, each is compared with the first on the same examples
(:func:`~mmadapt.govern.ab.compare_scores`: paired bootstrap CI and sign test).

:func:`check_suites` is what ``registry promote`` calls for a recipe's ``eval.suites``;
:func:`run_all` is ``mmadapt eval --all``: every suite on the current version of every recipe of
its modality that has been run.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.engine.artifact import read_manifest, versions
from mmadapt.engine.evaluate import aggregate, score_rows, slice_metrics, slice_values
from mmadapt.engine.versions import current_version, recipe_dir, resolve_version
from mmadapt.errors import MmadaptError, SuiteError
from mmadapt.evalspec import Suite, find_suite, load_suite
from mmadapt.govern.ab import MetricDiff, compare_scores
from mmadapt.protocols import get_modality


@dataclass
class SetScore:
    """One target on one held-out set."""

    set: str  # the set's file or folder name
    examples: int
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    failures: list[str]  # the bars missed on this set, e.g. 'fact_accuracy 0.10 < 0.30'
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    slices: dict[str, Any] = field(default_factory=dict)  # the suite's slice_by: {"by", "groups": value -> n, metrics, ci95}


@dataclass
class TargetScore:
    """One target (a version) on every set of a suite."""

    target: str  # as given
    recipe: str
    version: str
    version_dir: Path
    sets: list[SetScore]

    @property
    def failures(self) -> list[str]:
        """Every bar missed, prefixed with its set when the suite has several."""
        many = len(self.sets) > 1
        return [f"{s.set}: {f}" if many else f for s in self.sets for f in s.failures]

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class SuiteResult:
    suite: Suite
    targets: list[TargetScore]
    diffs: dict[tuple[int, str], list[MetricDiff]] = field(default_factory=dict)  # (target index >= 1, set) -> vs targets[0]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def to_dict(self) -> dict[str, Any]:
        """What ``mmadapt eval --json`` prints (per-example rows left out)."""
        s = self.suite
        return {
            "suite": s.name, "source": str(s.source), "modality": s.modality, "metrics": s.metrics, "bars": s.bars,
            "lower_is_better": sorted(m for m in s.metrics if m in s.lower_is_better), "passed": self.passed,
            "targets": [
                {"target": t.target, "recipe": t.recipe, "version": t.version, "passed": t.passed, "failures": t.failures,
                 "sets": [{"set": x.set, "examples": x.examples, "metrics": x.metrics, "ci95": {k: list(v) for k, v in x.ci.items()},
                           "failures": x.failures, **({"slices": x.slices} if x.slices else {})} for x in t.sets]}
                for t in self.targets
            ],
            "diffs": [
                {"target": self.targets[i].target, "baseline": self.targets[0].target, "set": name, "metrics": [asdict(d) for d in diffs]}
                for (i, name), diffs in self.diffs.items()
            ],
        }


# ---------------------------------------------------------------- targets


def resolve_target(target: str | Path, output_dir: str | None = None) -> Path:
    """A version folder; ``recipe.yaml`` (its current version); ``recipe.yaml@vNNNN`` -> the version folder."""
    text = str(target)
    path, _, version = text.rpartition("@") if "@" in text else (text, "", None)
    if Path(path).suffix in (".yaml", ".yml"):
        from mmadapt.recipe import load_recipe

        recipe = load_recipe(path)
        return resolve_version(recipe_dir(output_dir or recipe.output_dir, recipe.name), version or None)
    folder = Path(text)
    if not (folder / "manifest.json").is_file():
        raise MmadaptError(
            "is not a version folder nor a recipe", path=text,
            fix="pass runs/<name>/vNNNN, a recipe .yaml (its current version) or recipe.yaml@vNNNN",
        )
    return folder


def _check_modality(suite: Suite, version_dir: Path, label: str) -> None:
    modality = read_manifest(version_dir).get("modality")
    if modality != suite.modality:
        raise SuiteError(
            f"{label} is a {modality} version; suite {suite.name} is for {suite.modality}",
            path=suite.source, fix=f"pass a {suite.modality} version or recipe",
        )


def set_labels(suite: Suite) -> list[str]:
    """What a set is called in tables and failures: its file or folder name, its path where names repeat."""
    names = [p.name for p in suite.sets]
    return names if len(set(names)) == len(names) else [str(p) for p in suite.sets]


def score_version(suite: Suite, version_dir: Path, label: str | None = None, *, progress: bool = False) -> TargetScore:
    """Load ``version_dir`` and score it on every set of ``suite``."""
    from mmadapt.engine.runner import load_artifact

    _check_modality(suite, version_dir, label or str(version_dir))
    loaded = load_artifact(version_dir)
    modality = get_modality(suite.modality)
    recipe = loaded.recipe
    sets = []
    for set_path, set_label in zip(suite.sets, set_labels(suite)):
        as_eval = recipe.model_copy(update={"data": recipe.data.model_copy(update={"eval": str(set_path)})})
        data = modality.load_data(as_eval)
        examples = list(data.eval)
        by = suite.slice_by
        values = slice_values(modality, data, examples, by, path=set_path, error=SuiteError, key="slice_by") if by else []
        predictions = loaded.predictor.predict([e.input for e in examples], progress=progress)
        rows = score_rows(modality, predictions, examples, suite.metrics, data)
        metrics, ci = aggregate(modality, rows, suite.metrics, recipe.eval.bootstrap, seed=recipe.train.seed)
        slices = {"by": by, "groups": slice_metrics(modality, rows, values, suite.metrics, recipe.eval.bootstrap, recipe.train.seed)} if by else {}
        sets.append(SetScore(set_label, len(examples), metrics, ci, suite.check(metrics), rows, slices))
        del predictions
    del loaded
    gc.collect()
    return TargetScore(label or str(version_dir), recipe.name, version_dir.name, version_dir, sets)


def run_suite(
    suite: Suite | str | Path, targets: Sequence[str | Path], *, output_dir: str | None = None, progress: bool = False
) -> SuiteResult:
    """Score each target on the suite's sets, check its bars; with several targets, pair each with the first.

    Every target is resolved and its modality checked before anything is loaded.
    """
    if not isinstance(suite, Suite):
        suite = load_suite(suite)
    if not targets:
        raise MmadaptError("no targets", fix="pass a version folder, a recipe .yaml or recipe.yaml@vNNNN")
    dirs = [resolve_target(t, output_dir) for t in targets]
    for target, folder in zip(targets, dirs):
        _check_modality(suite, folder, str(target))
    scores = [score_version(suite, folder, str(target), progress=progress) for target, folder in zip(targets, dirs)]
    modality = get_modality(suite.modality)
    diffs = {}
    for i, other in enumerate(scores[1:], start=1):
        for first_set, other_set in zip(scores[0].sets, other.sets):
            diffs[(i, other_set.set)] = compare_scores(
                first_set.rows, other_set.rows, suite.metrics, lower_is_better=modality.lower_is_better
            )
    return SuiteResult(suite, scores, diffs)


# ---------------------------------------------------------------- promotion gate


def check_suites(version_dir: Path, recipe: Any, *, progress: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Score ``version_dir`` on each suite of ``recipe.eval.suites``.

    Returns the failures, one per missed bar as ``'eval/x.yaml: fact_accuracy 0.10 < 0.30'``, and
    the figures measured (suite path -> set -> metrics) for the audit log.
    """
    failures: list[str] = []
    figures: dict[str, Any] = {}
    for value in recipe.eval.suites:
        found = find_suite(value, recipe.source)
        if found is None:
            raise SuiteError(f"eval.suites: {value!r} does not exist", path=recipe.source)
        result = score_version(load_suite(found), version_dir, progress=progress)
        figures[value] = {s.set: s.metrics for s in result.sets}
        failures += [f"{value}: {f}" for f in result.failures]
    return failures, figures


# ---------------------------------------------------------------- every suite, every recipe


@dataclass
class AllRow:
    suite: str
    recipe: str
    version: str
    passed: bool
    failures: list[str]
    metrics: dict[str, float]  # of the first set (the table's figures)
    bars: dict[str, float] = field(default_factory=dict)


@dataclass
class AllResult:
    rows: list[AllRow]
    skipped: list[tuple[str, str]]  # (recipe path, why)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "rows": [asdict(r) for r in self.rows],
                "skipped": [{"recipe": p, "why": why} for p, why in self.skipped]}


def run_all(
    suites_dir: str | Path = "eval", recipes_dir: str | Path = "recipes", *, progress: bool = False,
    announce: Callable[[str], None] | None = None,
) -> AllResult:
    """Every suite of ``suites_dir`` on the current version of every recipe under ``recipes_dir`` of its modality
    (only the recipes a suite names under ``recipes:``, where it names any).

    Recipes never run are skipped (and listed); a bad suite or recipe file is a one-line error
    before anything is scored. ``announce`` is told each (suite, version) before it is scored.
    """
    from mmadapt.recipe import load_recipe

    if not Path(recipes_dir).is_dir():
        raise SuiteError("no such folder of recipes", path=recipes_dir, fix="run from the project root or pass --recipes DIR")
    suite_files = sorted(Path(suites_dir).glob("*.yaml"))
    if not suite_files:
        raise SuiteError("no suites (*.yaml) here", path=suites_dir, fix="add suites to eval/ or pass --suites DIR")
    suites = [load_suite(p) for p in suite_files]
    recipes = [(p, load_recipe(p)) for p in sorted(Path(recipes_dir).rglob("*.y*ml")) if p.suffix in (".yaml", ".yml")]
    rows, skipped, seen = [], [], set()
    for suite, path in zip(suites, suite_files):
        for recipe_path, recipe in recipes:
            if recipe.modality != suite.modality or (suite.recipes is not None and recipe.name not in suite.recipes):
                continue
            rdir = recipe_dir(recipe.output_dir, recipe.name)
            name = current_version(rdir) if versions(rdir) else None
            if name is None:
                if recipe_path not in seen:
                    skipped.append((str(recipe_path), "no versions (run it first)"))
                    seen.add(recipe_path)
                continue
            if announce is not None:
                announce(f"{path}: {recipe.name} {name}")
            score = score_version(suite, rdir / name, f"{recipe.name}@{name}", progress=progress)
            first = score.sets[0].metrics if score.sets else {}
            rows.append(AllRow(str(path), recipe.name, name, score.passed, score.failures, first, dict(suite.bars)))
    return AllResult(rows, skipped)
