"""Several stacks of one recipe on the same data and seed -> the decision table.

Each stack runs in a process of its own (:func:`mmadapt.engine.runner.run_in_process`, which
returns the manifest it wrote), so its peak memory and latency are its own, and each leaves a normal artifact
version (recipe name ``<name>--<stack>``). The report holds quality metrics with 95%
bootstrap confidence intervals next to what each stack costs, as ``report.md``,
``report.json`` and ``report.png`` (quality against training cost, point size =
artifact bytes).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmadapt.config import CompareConfig
from mmadapt.engine.runner import run_in_process
from mmadapt.engine.stats import paired_bootstrap
from mmadapt.govern.report import human_bytes, table
from mmadapt.protocols import STACK_ORDER, get_modality
from mmadapt.recipe import Recipe, parse_stack, stack_label

COST_COLUMNS = ("train_seconds", "trainable_params", "artifact_bytes", "latency_p50_ms", "latency_p95_ms", "peak_rss_mib")


def default_stacks(recipe: Recipe) -> list[str]:
    """base, each configured strategy alone, and the whole stack."""
    names = recipe.stack
    stacks = ["base"] + [n for n in STACK_ORDER if n in names]
    if len(names) > 1:
        stacks.append(stack_label(names))
    return stacks


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    report_dir: Path
    primary_metric: str


def stack_recipe(recipe: Recipe, names: list[str]) -> Recipe:
    """The recipe one stack of a comparison runs: named ``<name>--<stack>``, its own versions, no compare section."""
    sub = recipe.with_stack(names)
    return sub.model_copy(
        update={
            "name": f"{recipe.name}--{stack_label(names)}".replace("+", "-"),
            "output_dir": str(Path(recipe.output_dir).resolve()),
            "compare": CompareConfig(),
            "compare_strategies": {},
        }
    )


def compare(
    recipe: Recipe, stacks: Sequence[str] | None = None, *, resume: bool = False, progress: bool = True
) -> CompareResult:
    """Run every stack of ``recipe`` and write the decision report; return its rows."""
    modality = get_modality(recipe.modality)
    labels = list(stacks or recipe.compare.stacks or default_stacks(recipe))
    parsed = [parse_stack(label, modality) for label in labels]
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = Path(recipe.output_dir) / recipe.name / "compare" / stamp
    report_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    version_dirs: list[Path] = []
    for names in parsed:
        label = stack_label(names)
        sub = stack_recipe(recipe, names)
        path = report_dir / "stacks" / f"{label.replace('+', '-')}.yaml"  # the record of what ran (mmadapt run re-runs it)
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(_runnable(sub), sort_keys=False, allow_unicode=True))
        if progress:
            print(f"[compare] {label}", file=sys.stderr, flush=True)
        manifest = run_in_process(sub, resume=resume, progress=progress)
        row: dict[str, Any] = {"stack": label, "version": f"{manifest['name']}/{manifest['version']}"}
        for metric, value in manifest["metrics"].items():
            lo, hi = manifest.get("ci95", {}).get(metric, (None, None))
            row[metric] = value
            row[f"{metric}_ci"] = [lo, hi]
        row.update({k: manifest["costs"].get(k) for k in COST_COLUMNS})
        sheet = _copy_overview(manifest, recipe, report_dir, label)
        if sheet:
            row["samples"] = sheet
        rows.append(row)
        version_dirs.append(Path(recipe.output_dir).resolve() / manifest["name"] / manifest["version"])
    paired_vs_base(rows, version_dirs, seed=recipe.train.seed)
    result = CompareResult(rows, report_dir, modality.primary_metric)
    write_report(result, recipe)
    return result


def _runnable(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe with its data paths absolute, as a YAML file that runs from anywhere."""
    resolved = recipe.resolved()
    resolved["data"] = {k: (recipe.data_paths.get(v, v) if isinstance(v, str) else v) for k, v in resolved["data"].items()}
    resolved.pop("compare", None)
    return resolved


def _example_scores(version_dir: Path) -> dict[str, dict[str, Any]]:
    path = version_dir / "predictions.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r.get("id")): r for r in records if "id" in r}


def paired_vs_base(rows: list[dict[str, Any]], version_dirs: Sequence[Path], seed: int = 0) -> None:
    """Add ``<metric>_vs_base`` (mean paired difference to the base row over the same eval examples,
    its 95% bootstrap CI and p-value) to every row, when the comparison has a ``base`` row.

    The stacks share the eval examples and seeds, so the paired difference is the sharper test
    of "better than the base" than two overlapping per-stack intervals.
    """
    labels = [row["stack"] for row in rows]
    if "base" not in labels:
        return
    base = _example_scores(version_dirs[labels.index("base")])
    metrics = metric_names(rows)
    for row, folder in zip(rows, version_dirs):
        if row["stack"] == "base":
            continue
        scores = _example_scores(folder)
        ids = [i for i in base if i in scores]
        for metric in metrics:
            pairs = [(base[i].get(metric), scores[i].get(metric)) for i in ids]
            pairs = [(a, b) for a, b in pairs if isinstance(a, (int, float)) and isinstance(b, (int, float))]
            if len(pairs) < 2:
                continue
            test = paired_bootstrap([a for a, _ in pairs], [b for _, b in pairs], seed=seed)
            row[f"{metric}_vs_base"] = {k: round(v, 4) for k, v in test.items()}


def paired_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of 'Δ [lo, hi]' cells of each metric against the base (empty when there is none)."""
    metrics = [m for m in metric_names(rows) if any(f"{m}_vs_base" in r for r in rows)]
    out = []
    for row in rows:
        if row["stack"] == "base":
            continue
        shown = {"stack": row["stack"]}
        for m in metrics:
            t = row.get(f"{m}_vs_base")
            shown[f"Δ {m}"] = "-" if t is None else f"{t['diff']:+.3f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}] p={t['p_value']:.3f}"
        out.append(shown)
    return (out, ["stack", *[f"Δ {m}" for m in metrics]]) if metrics else ([], [])


def _copy_overview(manifest: dict[str, Any], recipe: Recipe, report_dir: Path, label: str) -> str | None:
    """Copy a stack's overview sample (its first ``samples`` file, e.g. a contact sheet) into the report."""
    samples = manifest.get("samples") or []
    if not samples:
        return None
    source = Path(recipe.output_dir).resolve() / manifest["name"] / manifest["version"] / samples[0]
    if not source.is_file():
        return None
    target = report_dir / "samples" / f"{label.replace('+', '-')}{source.suffix}"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(source, target)
    return str(target.relative_to(report_dir))


def metric_names(rows: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for row in rows:
        for key in row:
            if f"{key}_ci" in row and key not in names:
                names.append(key)
    return names


def display_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows with 'value [lo, hi]' metric cells and human-readable sizes, and their columns."""
    metrics = metric_names(rows)
    out = []
    for row in rows:
        shown = {"stack": row["stack"]}
        for m in metrics:
            lo, hi = row.get(f"{m}_ci", (None, None))
            value = row.get(m)
            shown[m] = "-" if value is None else f"{value:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{value:.3f}"
        for c in COST_COLUMNS:
            shown[c] = human_bytes(row.get(c)) if c == "artifact_bytes" else row.get(c)
        out.append(shown)
    return out, ["stack", *metrics, *COST_COLUMNS]


def write_report(result: CompareResult, recipe: Recipe) -> None:
    shown, columns = display_rows(result.rows)
    (result.report_dir / "report.json").write_text(
        json.dumps(
            {
                "recipe": recipe.name,
                "modality": recipe.modality,
                "primary_metric": result.primary_metric,
                "lower_is_better": sorted(get_modality(recipe.modality).lower_is_better),
                "rows": result.rows,
            },
            indent=2,
        )
    )
    md = [
        f"# {recipe.name}: which strategy?",
        "",
        f"Modality {recipe.modality}, base model `{recipe.base_model}`, eval set `{recipe.data.eval}`.",
        "Quality metrics are means over the eval set with 95% bootstrap confidence intervals; costs are measured in the same run.",
        "",
        table(shown, columns, markdown=True),
        "",
        "![quality against training cost](report.png)",
        "",
    ]
    paired, paired_columns = paired_rows(result.rows)
    if paired:
        md += [
            "## Against the base, example by example",
            "",
            "Mean paired difference to the base over the same eval examples (same seeds), 95% bootstrap CI, two-sided p.",
            "",
            table(paired, paired_columns, markdown=True),
            "",
        ]
    sheets = [(row["stack"], row["samples"]) for row in result.rows if row.get("samples")]
    if sheets:
        md += ["## Samples", ""]
        for label, rel in sheets:
            md += [f"### {label}", "", f"![{label} samples]({rel})", ""]
    (result.report_dir / "report.md").write_text("\n".join(md))
    plot(result, result.report_dir / "report.png")


def plot(result: CompareResult, path: Path) -> None:
    """Primary metric against training seconds; point area grows with artifact bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    metric = result.primary_metric
    for row in result.rows:
        x = (row.get("train_seconds") or 0.0) + 1.0
        y = row.get(metric)
        if y is None:
            continue
        size = 30 + 400 * min(1.0, ((row.get("artifact_bytes") or 0) / 6e8) ** 0.5)
        ax.scatter([x], [y], s=size, alpha=0.6)
        lo, hi = row.get(f"{metric}_ci", (None, None))
        if lo is not None:
            ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="none", ecolor="grey", capsize=3)
        ax.annotate(row["stack"], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds + 1 (log)")
    ax.set_ylabel(metric)
    ax.set_title("quality against training cost (area = artifact bytes)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
