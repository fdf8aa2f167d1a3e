"""The versions of a recipe's artifacts: list, show, diff, promote, rollback, audit.

Versions are folders ``v0001, v0002, ...`` under ``<output_dir>/<recipe name>/``; the
file ``current`` names the one in use. Rolling back and promoting rewrite ``current``
atomically, under the recipe folder's lock with their audit line (runs, promotions and
rollbacks from many processes are recorded in the order they moved the pointer); no version
is ever deleted by these functions.

Governance:

* a new run becomes current by itself when its recipe has no ``eval.min`` bars; when it
  has bars, only the first version does (something must be served) and every later one
  waits for :func:`promote`, which checks the bars against the version's measured metrics;
* ``audit.jsonl`` (append-only, one JSON object a line) records who did what, when and
  why: ``run`` (written when a version is committed), ``promote``, ``refused-promote``
  and ``rollback``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmadapt.engine.artifact import CURRENT, read_manifest, versions, write_text_atomic
from mmadapt.engine.locks import recipe_lock
from mmadapt.engine.versions import (  # noqa: F401 - the registry's API: versions on disk, pointer, audit
    ACTIONS,
    AUDIT,
    audit,
    check_bars,
    committed,
    current_version,
    read_audit,
    recipe_dir,
    resolve_version,
    user,
)
from mmadapt.errors import ArtifactError, MmadaptError


class PromotionError(MmadaptError):
    """A version does not meet the recipe's ``eval.min`` bars, so it cannot become current."""


def list_versions(rdir: Path) -> list[dict[str, Any]]:
    """One summary row per version, oldest first."""
    rows = []
    current = current_version(rdir)
    for version in versions(rdir):
        manifest = read_manifest(rdir / version)
        rows.append(
            {
                "version": version,
                "current": version == current,
                "created": manifest.get("created"),
                "stack": "+".join(manifest.get("stack", [])),
                "metrics": manifest.get("metrics", {}),
                "recipe_hash": manifest.get("recipe_hash", "")[:12],
                "data_hash": manifest.get("data", {}).get("fingerprint", "")[:12],
            }
        )
    return rows


def show(rdir: Path, version: str | None = None) -> dict[str, Any]:
    return read_manifest(resolve_version(rdir, version))


def rollback(rdir: Path, to: str | None = None, *, reason: str | None = None) -> str:
    """Point ``current`` at ``to`` (default: the version before the current one); return it.

    A rollback is the emergency move and is not held to the bars; it is written to the audit log.
    """
    if not versions(rdir):
        raise ArtifactError("no versions to roll back to", path=rdir, fix="run the recipe first")
    with recipe_lock(rdir):
        found = versions(rdir)
        previous = current_version(rdir)
        if to is None:
            index = found.index(previous) if previous in found else len(found)
            if index == 0:
                raise ArtifactError(f"{previous} is the oldest version; nothing to roll back to", path=rdir)
            to = found[index - 1]
        target = resolve_version(rdir, to)
        write_text_atomic(rdir / CURRENT, target.name + "\n")
        audit(rdir, "rollback", target.name, reason, previous=previous)
    return target.name


def diff(rdir: Path, a: str, b: str) -> dict[str, Any]:
    """What differs between two versions: recipe keys, data hash, metrics."""
    ma, mb = show(rdir, a), show(rdir, b)

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out

    ra, rb = flat(ma.get("recipe", {})), flat(mb.get("recipe", {}))
    recipe = {k: (ra.get(k), rb.get(k)) for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)}
    metrics_a, metrics_b = ma.get("metrics", {}), mb.get("metrics", {})
    metrics = {
        k: (metrics_a.get(k), metrics_b.get(k)) for k in sorted(set(metrics_a) | set(metrics_b))
    }
    return {
        "a": a,
        "b": b,
        "recipe": recipe,
        "data": (ma.get("data", {}).get("fingerprint"), mb.get("data", {}).get("fingerprint")),
        "metrics": metrics,
    }




def promoted_versions(rdir: Path) -> list[str]:
    """Versions that were ever promoted, in the order of their (last) promotion."""
    order: dict[str, None] = {}
    for entry in read_audit(rdir):
        if entry.get("what") == "promote" and entry.get("version"):
            order.pop(entry["version"], None)
            order[entry["version"]] = None
    return list(order)


def promote(rdir: Path, version: str, recipe: Any, *, reason: str | None = None) -> str:
    """Make ``version`` current if it meets every bar in ``recipe.eval.min`` and every bar of each
    suite in ``recipe.eval.suites`` (scored now, :mod:`mmadapt.govern.suites`); return its name.

    A refusal is audited (``refused-promote``) and raised as one line with the figures.
    """
    target = resolve_version(rdir, version)
    manifest = read_manifest(target)
    bars = dict(recipe.eval.min)
    failures = check_bars(manifest.get("metrics") or {}, bars)
    suite_figures: dict[str, Any] = {}
    if recipe.eval.suites:
        from mmadapt.govern.suites import check_suites

        missed, suite_figures = check_suites(target, recipe)
        failures += missed
    if failures:
        extra = {"suites": suite_figures} if suite_figures else {}
        audit(rdir, "refused-promote", target.name, reason, bars_missed=failures, bars=bars, **extra)
        where = f" in {recipe.source}" if recipe.source else ""
        gates = "eval.min" if not recipe.eval.suites else "its bars (eval.min, eval.suites)"
        raise PromotionError(
            f"{target.name} does not meet {gates}: {'; '.join(failures)}",
            path=rdir,
            fix=f"improve the version and run again, or change the bars{where}",
        )
    with recipe_lock(rdir):
        previous = current_version(rdir)
        write_text_atomic(rdir / CURRENT, target.name + "\n")
        extra = {"suites": suite_figures} if suite_figures else {}
        audit(rdir, "promote", target.name, reason, previous=previous, bars=bars, metrics=manifest.get("metrics") or {}, **extra)
    return target.name
