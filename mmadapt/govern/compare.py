"""Several stacks of one recipe on the same data and seed -> the decision table.

Each stack runs in a process of its own (:func:`mmadapt.engine.runner.run_in_process`, which
returns the manifest it wrote), so its peak memory and latency are its own, and each leaves a normal artifact
version (recipe name ``<name>--<stack>``). The report holds quality metrics with 95%
bootstrap confidence intervals next to what each stack costs, as ``report.md``,
``report.json`` and ``report.png`` (quality against training cost, point size =
artifact bytes), and ranks the rows by the modality's primary metric, marking those whose CI
overlaps the best one's (``tied``).

A grid (``--grid`` / ``compare.grid``, :mod:`mmadapt.govern.sweep`) runs a stack once per setting
(rows ``adapter[r=8,lr=0.001]``: a plain ``stack``, its ``settings`` and that ``label``). Every run's
recipe is validated before anything is written. ``parallel`` runs up to N at once (:func:`run_all`);
the report is the same as one run after another: same recipes and seeds, rows in the order asked.
A run that fails does not stop the others: the report holds those that finished, then one error
names the failed run.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import shutil
import sys
import threading
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmadapt.engine.evaluate import check_slices
from mmadapt.engine.placement import slot_envs, thread_cap, usable_cores, visible_gpus
from mmadapt.engine.runner import run_in_process
from mmadapt.engine.stats import paired_bootstrap
from mmadapt.errors import MmadaptError
from mmadapt.govern.report import ci_cell, human_bytes, slice_rows, table
from mmadapt.govern.sweep import Run, default_stacks, plan, runnable
from mmadapt.protocols import get_modality
from mmadapt.recipe import Recipe

COST_COLUMNS = ("train_seconds", "trainable_params", "artifact_bytes", "latency_p50_ms", "latency_p95_ms", "peak_rss_mib")


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    report_dir: Path
    primary_metric: str


def compare(
    recipe: Recipe,
    stacks: Sequence[str] | None = None,
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    parallel: int = 1,
    resume: bool = False,
    progress: bool = True,
) -> CompareResult:
    """Run every stack of ``recipe`` (with a grid, each of its settings) and write the decision report; return its rows.

    ``stacks``: None = the recipe's ``compare.stacks``, else base, each strategy, the whole stack.
    ``grid``: key path -> values (None = the recipe's ``compare.grid``; see :mod:`mmadapt.govern.sweep`).
    ``parallel``: how many runs at once (:func:`run_all`). Raises a RecipeError before anything is
    written when a stack or grid key is wrong; an MmadaptError naming the run when one failed.
    """
    if parallel < 1:
        raise MmadaptError(f"parallel must be at least 1 (got {parallel})", fix="e.g. --parallel 2")
    modality = get_modality(recipe.modality)
    labels = list(stacks or recipe.compare.stacks or default_stacks(recipe))
    runs = plan(recipe, labels, recipe.compare.grid if grid is None else grid)
    if recipe.eval.slice_by:  # a bad eval.slice_by is one line before any run starts
        check_slices(modality, modality.load_data(recipe), recipe)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    report_dir = Path(recipe.output_dir) / recipe.name / "compare" / stamp
    (report_dir / "stacks").mkdir(parents=True, exist_ok=True)
    for run in runs:  # the record of what ran (mmadapt run re-runs it)
        record = yaml.safe_dump(runnable(run.recipe), sort_keys=False, allow_unicode=True)
        (report_dir / "stacks" / f"{run.slug}.yaml").write_text(record)
    outcomes = run_all(runs, parallel=parallel, resume=resume, progress=progress)
    rows: list[dict[str, Any]] = []
    version_dirs: list[Path] = []
    failed: dict[str, Exception] = {}
    for run, outcome in zip(runs, outcomes):
        if isinstance(outcome, Exception):
            failed[run.label] = outcome
            continue
        rows.append(_row(run, outcome, recipe, report_dir))
        version_dirs.append(Path(recipe.output_dir).resolve() / outcome["name"] / outcome["version"])
    paired_vs_base(rows, version_dirs, seed=recipe.train.seed)
    rank_rows(rows, modality.primary_metric, modality.lower_is_better)
    result = CompareResult(rows, report_dir, modality.primary_metric)
    if rows:
        write_report(result, recipe, failed={label: str(exc) for label, exc in failed.items()})
    if failed:
        raise _failure(failed, len(rows), report_dir)
    return result


def _row(run: Run, manifest: dict[str, Any], recipe: Recipe, report_dir: Path) -> dict[str, Any]:
    row: dict[str, Any] = {"stack": run.stack, "settings": run.settings, "label": run.label,
                           "version": f"{manifest['name']}/{manifest['version']}"}
    for metric, value in manifest["metrics"].items():
        lo, hi = manifest.get("ci95", {}).get(metric, (None, None))
        row[metric] = value
        row[f"{metric}_ci"] = [lo, hi]
    row.update({k: manifest["costs"].get(k) for k in COST_COLUMNS})
    if manifest.get("slices"):
        row["slices"] = manifest["slices"]
    sheet = _copy_overview(manifest, recipe, report_dir, run.slug)
    if sheet:
        row["samples"] = sheet
    return row


def _failure(failed: dict[str, Exception], finished: int, report_dir: Path) -> Exception:
    """What compare raises when runs failed: a bug's own exception (with a note naming the run), else one line."""
    for label, exc in failed.items():
        if not isinstance(exc, MmadaptError):
            exc.add_note(f"mmadapt compare: raised by the run of {label}")
            return exc
    what = "; ".join(f"{label} failed: {exc}" for label, exc in failed.items())
    rest = f"the {finished} other run(s) finished (report: {report_dir / 'report.md'})" if finished else "no run finished"
    return MmadaptError(f"{what}; {rest}", fix=f"fix it and compare again ({report_dir / 'stacks'} holds each run's recipe)")


def run_all(
    runs: Sequence[Run], *, parallel: int = 1, resume: bool = False, progress: bool = True
) -> list[dict[str, Any] | Exception]:
    """Each run in a spawned process of its own, up to ``parallel`` at once (one at a time: in the order
    given; several: the runs that train first, those with more strategies first within each).

    Returns, in the order of ``runs`` (whatever order they finish in), each run's manifest or the
    exception that ended it: a failure does not stop the others. With more than one at a time,
    each process starts with the environment of a free slot (:func:`~mmadapt.engine.placement.slot_envs`:
    one GPU each where there are GPUs, else an even share of the cores), its progress bars are off,
    and a line at each start and end says which runs are running.
    """
    width = max(1, min(parallel, len(runs)))
    envs: list[dict[str, str] | None] = [None]
    if width > 1:
        envs = list(slot_envs(width, visible_gpus(), usable_cores(), thread_cap()))
    free: queue.SimpleQueue = queue.SimpleQueue()
    for env in envs:
        free.put(env)
    running: list[str] = []
    lock = threading.Lock()
    finished = 0

    def say(text: str) -> None:
        if progress:
            print(f"[compare] {text}", file=sys.stderr, flush=True)

    def one(run: Run) -> dict[str, Any] | Exception:
        nonlocal finished
        env = free.get()  # never waits: there are as many slots as threads
        with lock:
            running.append(run.label)
            say(run.label if width == 1 else f"start {run.label}{_placed(env)}; running: {', '.join(running)}")
        outcome: dict[str, Any] | Exception
        try:
            outcome = run_in_process(run.recipe, resume=resume, progress=progress and width == 1, env=env)
        except Exception as exc:  # noqa: BLE001 - kept, and raised once the others have finished
            outcome = exc
        free.put(env)
        with lock:
            running.remove(run.label)
            finished += 1
            if width > 1 or isinstance(outcome, Exception):
                state = f"FAILED {run.label}: {_first_line(outcome)}" if isinstance(outcome, Exception) else f"done {run.label}"
                say(f"{state} ({finished}/{len(runs)} finished" + (f"; running: {', '.join(running)})" if running else ")"))
        return outcome

    # Longest first: with several slots, the runs that train start before those that only predict,
    # and among each, those that stack more strategies (a LoRA behind retrieval trains on the passages
    # too), so the slots finish close together (a long run left to the end idles the other slots).
    def longest_first(i: int) -> tuple[bool, int]:
        return not trains(runs[i].recipe), -len(runs[i].recipe.stack)

    order = sorted(range(len(runs)), key=longest_first) if width > 1 else range(len(runs))
    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="mmadapt-compare") as pool:
        futures = {i: pool.submit(one, runs[i]) for i in order}
        return [futures[i].result() for i in range(len(runs))]


def trains(recipe: Recipe) -> bool:
    """Whether a run's stack trains weights (its modality's strategies say so): the long runs of a compare."""
    strategies = get_modality(recipe.modality).strategies
    return any(strategies[name].trains for name in recipe.stack)


def _first_line(exc: Exception) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _placed(env: Mapping[str, str] | None) -> str:
    if not env:
        return ""
    gpu = env.get("CUDA_VISIBLE_DEVICES")
    return f" on GPU {gpu}" if gpu is not None else f" on {env.get('OMP_NUM_THREADS')} thread(s)"


def rank_rows(rows: list[dict[str, Any]], metric: str, lower_is_better: Collection[str] = ()) -> None:
    """Add ``rank`` (1 = the best ``metric``: the smallest where the modality says lower is better;
    equal figures keep the order asked; None without the figure) and ``tied`` (its 95% CI overlaps
    the best row's, so there is no evidence the best is better) to every row."""
    sign = -1.0 if metric in lower_is_better else 1.0
    ranked = sorted((r for r in rows if isinstance(r.get(metric), (int, float))), key=lambda r: -sign * r[metric])
    for row in rows:
        row["rank"], row["tied"] = None, False
    if not ranked:
        return
    best_lo, best_hi = _ci(ranked[0], metric)
    for place, row in enumerate(ranked, 1):
        lo, hi = _ci(row, metric)
        row["rank"], row["tied"] = place, hi >= best_lo and lo <= best_hi


def _ci(row: Mapping[str, Any], metric: str) -> tuple[float, float]:
    lo, hi = (list(row.get(f"{metric}_ci") or []) + [None, None])[:2]
    value = float(row[metric])
    return (value if lo is None else float(lo)), (value if hi is None else float(hi))


def label_of(row: Mapping[str, Any]) -> str:
    """What a row is called: its ``label`` (``adapter[r=8]``), or its ``stack`` in reports from before grids."""
    return str(row.get("label") or row["stack"])


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
            row[f"{metric}_vs_base"] = {**{k: round(v, 4) for k, v in test.items()}, "n": len(pairs), "of": len(ids)}


def paired_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of 'Δ [lo, hi]' cells of each metric against the base (empty when there is none)."""
    metrics = [m for m in metric_names(rows) if any(f"{m}_vs_base" in r for r in rows)]
    out = []
    for row in rows:
        if row["stack"] == "base":
            continue
        shown = {"stack": label_of(row)}
        for m in metrics:
            t = row.get(f"{m}_vs_base")
            shown[f"Δ {m}"] = "-" if t is None else f"{t['diff']:+.3f} [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}] p={t['p_value']:.3f}" + (
                f" n={t['n']}/{t['of']}" if t.get("n", 0) < t.get("of", 0) else ""  # a metric undefined on some clips
            )
        out.append(shown)
    return (out, ["stack", *[f"Δ {m}" for m in metrics]]) if metrics else ([], [])


def _copy_overview(manifest: dict[str, Any], recipe: Recipe, report_dir: Path, slug: str) -> str | None:
    """Copy a stack's overview sample (its first ``samples`` file, e.g. a contact sheet) into the report."""
    samples = manifest.get("samples") or []
    if not samples:
        return None
    source = Path(recipe.output_dir).resolve() / manifest["name"] / manifest["version"] / samples[0]
    if not source.is_file():
        return None
    target = report_dir / "samples" / f"{slug}{source.suffix}"
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
        shown = {"stack": label_of(row)}
        for m in metrics:
            shown[m] = _cell(row, m)
        for c in COST_COLUMNS:
            shown[c] = human_bytes(row.get(c)) if c == "artifact_bytes" else row.get(c)
        out.append(shown)
    return out, ["stack", *metrics, *COST_COLUMNS]


def _cell(row: Mapping[str, Any], metric: str) -> str:
    lo, hi = row.get(f"{metric}_ci", (None, None))
    return ci_cell(row.get(metric), lo, hi)


def sliced_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every stack's metrics per slice of ``eval.slice_by`` (value [95% CI]), stack by stack; empty without slices."""
    out: list[dict[str, Any]] = []
    columns: list[str] = []
    for row in rows:
        if row.get("slices"):
            shown, cols = slice_rows(row["slices"], label_of(row))
            out += shown
            columns += [c for c in cols if c not in columns]
    return out, columns


def ranked_rows(rows: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows :func:`rank_rows` ranked, best first: rank, label, the metric with its CI, tied (best / yes / no)."""
    ranked = sorted((r for r in rows if r.get("rank")), key=lambda r: r["rank"])
    shown = [{"rank": r["rank"], "stack": label_of(r), metric: _cell(r, metric),
              "tied": "best" if r["rank"] == 1 else "yes" if r["tied"] else "no"} for r in ranked]
    return shown, ["rank", "stack", metric, "tied"]


def write_report(result: CompareResult, recipe: Recipe, failed: Mapping[str, str] | None = None) -> None:
    """report.json, report.md and report.png in ``result.report_dir``; ``failed``: run label -> its error."""
    shown, columns = display_rows(result.rows)
    lower = sorted(get_modality(recipe.modality).lower_is_better)
    (result.report_dir / "report.json").write_text(
        json.dumps(
            {
                "recipe": recipe.name,
                "modality": recipe.modality,
                "primary_metric": result.primary_metric,
                "lower_is_better": lower,
                "rows": result.rows,
                **({"failed": dict(failed)} if failed else {}),
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
    metric = result.primary_metric
    ranked, ranked_columns = ranked_rows(result.rows, metric)
    if ranked:
        direction = "lower" if metric in lower else "higher"
        md += _section(f"Ranked by {metric} ({direction} is better)",
                       "`tied`: the 95% CI overlaps the best one's — no evidence the best is better, so the cheaper may do.",
                       ranked, ranked_columns)
    sliced, sliced_columns = sliced_rows(result.rows)
    if sliced:
        md += _section(f"By slice ({recipe.eval.slice_by})",
                       "Each metric on the eval examples of one slice only, with its own 95% bootstrap CI.", sliced, sliced_columns)
    paired, paired_columns = paired_rows(result.rows)
    if paired:
        md += _section("Against the base, example by example",
                       "Mean paired difference to the base over the same eval examples (same seeds), 95% bootstrap CI, two-sided p.",
                       paired, paired_columns)
    sheets = [(label_of(row), row["samples"]) for row in result.rows if row.get("samples")]
    if sheets:
        md += ["## Samples", ""]
        for label, rel in sheets:
            md += [f"### {label}", "", f"![{label} samples]({rel})", ""]
    if failed:
        md += ["## Failed", "", *[f"- {label}: {error}" for label, error in failed.items()], ""]
    (result.report_dir / "report.md").write_text("\n".join(md))
    plot(result, result.report_dir / "report.png")


def _section(heading: str, note: str, rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """A report.md section: heading, one line of what it shows, the Markdown table."""
    return [f"## {heading}", "", note, "", table(rows, columns, markdown=True), ""]


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
        ax.annotate(label_of(row), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training seconds + 1 (log)")
    ax.set_ylabel(metric)
    ax.set_title("quality against training cost (area = artifact bytes)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
