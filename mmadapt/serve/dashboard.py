"""The dashboard of ``mmadapt serve`` at ``/``: one plain HTML page, rendered on the server.

Per served recipe: its versions (current, candidate, split weights, loaded) with the request
rate, latency p50/p95, errors and feedback of each over the recent log; the last
``drift --from-log`` result; the newest ``compare`` decision table and its plot (inlined as a
data URI, so the page is one response that the API key guards like every other route). No
JavaScript: the page reloads itself every ``REFRESH_SECONDS``. Every value from a log, a
manifest or a report is escaped (:func:`html.escape`).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mmadapt.engine.artifact import read_manifest
from mmadapt.engine.versions import versions
from mmadapt.govern.compare import display_rows
from mmadapt.govern.livelog import read_drift, recent_feedback, recent_requests
from mmadapt.serve.live import Router

RATE_WINDOW_S = 300  # request rate over the last five minutes
REFRESH_SECONDS = 10
MAX_VERSIONS = 12  # the newest ones, plus any that is current, in a split or loaded
STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;background:#fff}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px}
th{background:#eee;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.current{background:#e6f4e6}.tag{display:inline-block;padding:0 6px;margin-right:4px;border-radius:3px;background:#dde;font-size:12px}
.ok{color:#175}.bad{color:#a11;font-weight:bold}.muted{color:#777}img.plot{max-width:720px;border:1px solid #ccc;background:#fff}"""


def _seconds(iso: Any) -> float | None:
    try:
        return dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def version_stats(requests: Iterable[Mapping[str, Any]], feedback: Iterable[Mapping[str, Any]], now: float) -> dict[str, dict[str, Any]]:
    """Per version: requests, per minute over the last RATE_WINDOW_S, errors, latency p50/p95 (answered), feedback n/mean."""
    out: dict[str, dict[str, Any]] = {}

    def of(version: str) -> dict[str, Any]:
        return out.setdefault(version, {"requests": 0, "recent": 0, "errors": 0, "latencies": [], "scores": []})

    for entry in requests:
        version = entry.get("version")
        if not isinstance(version, str):
            continue
        row = of(version)
        row["requests"] += 1
        at = _seconds(entry.get("time"))
        if at is not None and now - at <= RATE_WINDOW_S:
            row["recent"] += 1
        if entry.get("status") != 200:
            row["errors"] += 1
        elif isinstance(entry.get("latency_ms"), int | float):
            row["latencies"].append(float(entry["latency_ms"]))
    for entry in feedback:
        score = entry.get("score")
        if isinstance(entry.get("version"), str) and isinstance(score, int | float) and not isinstance(score, bool):
            of(entry["version"])["scores"].append(float(score))
    for row in out.values():
        lat, scores = row.pop("latencies"), row.pop("scores")
        row["per_minute"] = row.pop("recent") * 60.0 / RATE_WINDOW_S
        row["p50_ms"] = float(np.percentile(lat, 50)) if lat else None
        row["p95_ms"] = float(np.percentile(lat, 95)) if lat else None
        row["feedback_n"] = len(scores)
        row["feedback_mean"] = sum(scores) / len(scores) if scores else None
    return out


def recipe_view(name: str, rdir: Path, router: Router, now: float) -> dict[str, Any]:
    """What the page shows of one recipe, as data (the tests read it; :func:`render` writes it)."""
    current = router.current[name].name
    split = router.splits.get(name)
    weights = dict(split.weights) if split else {}
    total = sum(weights.values()) or 1.0
    loaded = {label.partition("@")[2] for label in router.pool.labels() if label.partition("@")[0] == name}
    all_versions = versions(rdir)
    newer = [v for v in all_versions if v > current]
    candidate = newer[-1] if newer else None
    shown = [v for v in all_versions if v in weights or v in loaded or v in (current, candidate)] + all_versions[-MAX_VERSIONS:]
    stats = version_stats(recent_requests(rdir), recent_feedback(rdir), now)
    rows = []
    for version in sorted(set(shown), reverse=True):
        manifest = read_manifest(rdir / version)
        states = [s for s, on in (("current", version == current), ("candidate", version == candidate),
                                  (f"split {100 * weights.get(version, 0) / total:.0f}%", version in weights),
                                  ("loaded", version in loaded)) if on]
        rows.append({"version": version, "states": states, "stack": "+".join(manifest.get("stack") or []) or "base",
                     "created": manifest.get("created"), "metrics": manifest.get("metrics") or {},
                     **stats.get(version, {"requests": 0, "per_minute": 0.0, "errors": 0, "p50_ms": None, "p95_ms": None,
                                           "feedback_n": 0, "feedback_mean": None})})
    return {"name": name, "current": current, "candidate": candidate, "split": weights, "versions": rows,
            "drift": read_drift(rdir), "compare": newest_compare(rdir)}


def newest_compare(rdir: Path) -> dict[str, Any] | None:
    """The newest ``compare`` report of the recipe (``compare/<stamp>/report.json`` and ``report.png``)."""
    folder = rdir / "compare"
    stamps = sorted(p for p in folder.iterdir() if (p / "report.json").is_file()) if folder.is_dir() else []
    if not stamps:
        return None
    try:
        report = json.loads((stamps[-1] / "report.json").read_text(encoding="utf-8"))
        rows, columns = display_rows(report.get("rows") or [])
    except (OSError, ValueError, KeyError, TypeError):
        return {"stamp": stamps[-1].name, "error": "report.json cannot be read"}
    plot = stamps[-1] / "report.png"
    return {"stamp": stamps[-1].name, "primary_metric": report.get("primary_metric"), "rows": rows, "columns": columns,
            "plot": plot.read_bytes() if plot.is_file() else None}


# ---------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return '<td class="n muted">-</td>'
    text = f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return f'<td class="n">{_e(text)}</td>'


def _table(columns: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    return f'<table class="{cls}"><tr>{head}</tr>' + "".join(f"<tr>{''.join(r)}</tr>" for r in rows) + "</table>"


def _versions_html(view: dict[str, Any]) -> str:
    rows = []
    for v in view["versions"]:
        metrics = ", ".join(f"{k} {val:.3f}" if isinstance(val, float) else f"{k} {val}" for k, val in list(v["metrics"].items())[:3])
        tags = "".join(f'<span class="tag">{_e(s)}</span>' for s in v["states"])
        rows.append([f"<td>{_e(v['version'])}</td>", f"<td>{tags}</td>", f"<td>{_e(v['stack'])}</td>", f"<td>{_e(metrics)}</td>",
                     _num(v["requests"]), _num(v["per_minute"]), _num(v["p50_ms"]), _num(v["p95_ms"]), _num(v["errors"]),
                     _num(v["feedback_n"]), _num(v["feedback_mean"], 3)])
    columns = ["version", "state", "stack", "eval metrics", "requests", "req/min (5 min)", "p50 ms", "p95 ms", "errors",
               "feedback n", "feedback mean"]
    table = _table(columns, rows, "versions")
    return table.replace(f"<tr><td>{_e(view['current'])}</td>", f'<tr class="current"><td>{_e(view["current"])}</td>', 1)


def _drift_html(drift: dict[str, Any] | None, name: str) -> str:
    if not drift:
        return f'<p class="muted">drift: not checked yet (<code>mmadapt drift {_e(name)} --from-log</code>)</p>'
    flagged = [s.get("name") for s in drift.get("signals") or [] if isinstance(s, dict) and s.get("drifted")]
    verdict = (f'<span class="bad">DRIFT ({_e(", ".join(map(str, flagged)))})</span>' if flagged
               else '<span class="ok">no drift</span>')
    signals = ", ".join(f"{_e(s.get('name'))} {_e(s.get('value'))} / {_e(s.get('threshold'))}"
                        for s in drift.get("signals") or [] if isinstance(s, dict))
    return (f"<p>drift: {verdict} — {_e(drift.get('n_new'))} served inputs against {_e(drift.get('n_train'))} train "
            f"inputs, checked {_e(drift.get('checked'))} <span class=\"muted\">({signals})</span></p>")


def _compare_html(compare: dict[str, Any] | None) -> str:
    if not compare:
        return '<p class="muted">no compare report yet (<code>mmadapt compare RECIPE</code>)</p>'
    if compare.get("error"):
        return f'<p class="bad">compare {_e(compare["stamp"])}: {_e(compare["error"])}</p>'
    rows = [[f"<td>{_e(r.get(c))}</td>" if c == "stack" else _num(r.get(c)) if not isinstance(r.get(c), str)
             else f'<td class="n">{_e(r.get(c))}</td>' for c in compare["columns"]] for r in compare["rows"]]
    out = f"<h3>newest compare: {_e(compare['stamp'])} (ranked by {_e(compare.get('primary_metric'))})</h3>"
    out += _table(compare["columns"], rows, "compare")
    if compare.get("plot"):
        data = base64.b64encode(compare["plot"]).decode("ascii")
        out += f'<p><img class="plot" alt="compare plot: quality against training cost" src="data:image/png;base64,{data}"></p>'
    return out


def render(router: Router, now: float | None = None) -> str:
    """The whole page."""
    now = time.time() if now is None else now
    parts = []
    for name, rdir in router.recipe_dirs.items():
        view = recipe_view(name, rdir, router, now)
        split = ", ".join(f"{v}: {w:g}" for v, w in view["split"].items()) or "none"
        parts.append(f"<h2>{_e(name)}</h2><p>current <b>{_e(view['current'])}</b> · candidate {_e(view['candidate'] or 'none')}"
                     f" · split {_e(split)}</p>" + _versions_html(view) + _drift_html(view["drift"], name) + _compare_html(view["compare"]))
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return ("<!doctype html><html><head><meta charset=\"utf-8\"><title>mmadapt serve</title>"
            f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}"><style>{STYLE}</style></head><body>'
            f"<h1>mmadapt serve</h1><p class=\"muted\">{_e(stamp)} · OpenAI-compatible API at /v1 · "
            f"recipes: {_e(', '.join(router.recipe_dirs))}</p>" + "".join(parts) + "</body></html>")
