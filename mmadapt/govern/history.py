"""A recipe's history as a report: versions, stacks, metrics over time, marks, audit entries.

``write_history`` writes ``report.md``, ``report.html`` and ``history.png`` (the primary
metric per version with its 95% CI, the current version ringed, the ``eval.min`` bar
dashed) into ``<output_dir>/<name>/history/`` unless told otherwise.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmadapt.engine.artifact import read_manifest, versions
from mmadapt.errors import ArtifactError
from mmadapt.govern.registry import check_bars, current_version, promoted_versions, read_audit, recipe_dir
from mmadapt.govern.report import fmt, human_bytes, table
from mmadapt.protocols import get_modality

AUDIT_COLUMNS = ("when", "who", "what", "version", "why")


@dataclass
class History:
    name: str
    primary_metric: str
    bars: dict[str, float]
    rows: list[dict[str, Any]]  # one per version, oldest first
    audit: list[dict[str, Any]]
    metrics: list[str] = field(default_factory=list)


def history(recipe) -> History:
    """Every version of ``recipe`` with its metrics, costs and marks, plus the audit log."""
    rdir = recipe_dir(recipe.output_dir, recipe.name)
    found = versions(rdir)
    if not found:
        raise ArtifactError("no versions yet", path=rdir, fix="run the recipe first: mmadapt run RECIPE")
    current = current_version(rdir)
    promoted = set(promoted_versions(rdir))
    bars = dict(recipe.eval.min)
    rows, metric_names = [], []
    for version in found:
        manifest = read_manifest(rdir / version)
        metrics = manifest.get("metrics") or {}
        for m in metrics:
            if m not in metric_names:
                metric_names.append(m)
        costs = manifest.get("costs") or {}
        marks = [mark for mark, on in (("current", version == current), ("promoted", version in promoted)) if on]
        missed = check_bars(metrics, bars)
        rows.append(
            {
                "version": version,
                "created": manifest.get("created"),
                "stack": "+".join(manifest.get("stack") or []) or "base",
                "metrics": metrics,
                "ci95": manifest.get("ci95") or {},
                "train_seconds": costs.get("train_seconds"),
                "artifact_bytes": costs.get("artifact_bytes"),
                "latency_p50_ms": costs.get("latency_p50_ms"),
                "marks": marks,
                "meets_bars": None if not bars else not missed,
                "bars_missed": missed,
                "recipe_hash": (manifest.get("recipe_hash") or "")[:12],
                "data_hash": ((manifest.get("data") or {}).get("fingerprint") or "")[:12],
            }
        )
    primary = get_modality(recipe.modality).primary_metric
    if primary not in metric_names and metric_names:
        primary = metric_names[0]
    return History(recipe.name, primary, bars, rows, read_audit(rdir), metric_names)


def _version_table(h: History) -> tuple[list[dict[str, Any]], list[str]]:
    shown = []
    for row in h.rows:
        cells = {
            "version": row["version"],
            "marks": ", ".join(row["marks"]),
            "created": row["created"],
            "stack": row["stack"],
        }
        for m in h.metrics:
            value = row["metrics"].get(m)
            lo, hi = (row["ci95"].get(m) or (None, None))[:2]
            cells[m] = "-" if value is None else f"{value:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{value:.3f}"
        cells["bars"] = "-" if row["meets_bars"] is None else "met" if row["meets_bars"] else "; ".join(row["bars_missed"])
        cells["train_s"] = row["train_seconds"]
        cells["bytes"] = human_bytes(row["artifact_bytes"])
        cells["p50_ms"] = row["latency_p50_ms"]
        shown.append(cells)
    return shown, ["version", "marks", "created", "stack", *h.metrics, "bars", "train_s", "bytes", "p50_ms"]


def _audit_rows(h: History, markdown: bool = False) -> list[dict[str, Any]]:
    def cell(value: Any) -> Any:
        return str(value).replace("|", "\\|").replace("\n", " ") if markdown and isinstance(value, str) else value

    return [{k: cell(e.get(k)) for k in AUDIT_COLUMNS} for e in h.audit]


def to_markdown(h: History, png_name: str = "history.png") -> str:
    shown, columns = _version_table(h)
    bars = ", ".join(f"{k} >= {v:.2f}" for k, v in h.bars.items()) or "none"
    lines = [
        f"# {h.name}: history",
        "",
        f"{len(h.rows)} versions; primary metric `{h.primary_metric}`; promotion bars (eval.min): {bars}.",
        "Metrics are means over each version's eval set with 95% bootstrap confidence intervals.",
        "",
        "## Versions",
        "",
        table(shown, columns, markdown=True),
        "",
        f"![{h.primary_metric} per version]({png_name})",
        "",
        "## Audit log",
        "",
        table(_audit_rows(h, markdown=True), AUDIT_COLUMNS, markdown=True) if h.audit else "No audit entries.",
        "",
    ]
    return "\n".join(lines)


def _html_table(rows: list[dict[str, Any]], columns) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(h: History, png_name: str = "history.png") -> str:
    shown, columns = _version_table(h)
    bars = ", ".join(f"{k} &ge; {v:.2f}" for k, v in h.bars.items()) or "none"
    audit = _html_table(_audit_rows(h), AUDIT_COLUMNS) if h.audit else "<p>No audit entries.</p>"
    title = html.escape(f"{h.name}: history")
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head>"
        f"<body><h1>{title}</h1><p>{len(h.rows)} versions; primary metric <code>{html.escape(h.primary_metric)}</code>; "
        f"promotion bars (eval.min): {bars}.</p><h2>Versions</h2>{_html_table(shown, columns)}"
        f"<p><img src='{html.escape(png_name)}' alt='{html.escape(h.primary_metric)} per version'></p>"
        f"<h2>Audit log</h2>{audit}</body></html>\n"
    )


def plot(h: History, path: Path) -> None:
    """The primary metric per version with its CI; current ringed; bar dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = h.primary_metric
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(h.rows) + 3), 4), dpi=110)
    xs, ys, los, his = [], [], [], []
    for i, row in enumerate(h.rows):
        value = row["metrics"].get(metric)
        if value is None:
            continue
        lo, hi = (row["ci95"].get(metric) or (value, value))[:2]
        xs.append(i)
        ys.append(value)
        los.append(value - (lo if lo is not None else value))
        his.append((hi if hi is not None else value) - value)
    if xs:
        ax.errorbar(xs, ys, yerr=[los, his], fmt="o-", capsize=3, color="tab:blue", label=metric)
    for i, row in enumerate(h.rows):
        if "current" in row["marks"] and row["metrics"].get(metric) is not None:
            ax.scatter([i], [row["metrics"][metric]], s=220, facecolors="none", edgecolors="tab:red", label="current")
        if "promoted" in row["marks"] and row["metrics"].get(metric) is not None:
            top = (row["ci95"].get(metric) or [None, None])[1]
            y = top if top is not None else row["metrics"][metric]
            ax.scatter([i], [y], marker="v", s=50, color="tab:green", zorder=3, label="promoted")
    if metric in h.bars:
        ax.axhline(h.bars[metric], linestyle="--", color="grey", label=f"eval.min {h.bars[metric]:.2f}")
    ax.set_xticks(range(len(h.rows)))
    ax.set_xticklabels([f"{r['version']}\n{r['stack']}" for r in h.rows], fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{h.name}: {metric} per version (95% CI)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_history(recipe, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.html and history.png; return their paths."""
    h = history(recipe)
    out = Path(out_dir) if out_dir else recipe_dir(recipe.output_dir, recipe.name) / "history"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot write the report: {exc.strerror}", path=out, fix="choose another --out") from None
    paths = {"md": out / "report.md", "html": out / "report.html", "png": out / "history.png"}
    paths["md"].write_text(to_markdown(h), encoding="utf-8")
    paths["html"].write_text(to_html(h), encoding="utf-8")
    plot(h, paths["png"])
    return paths
