"""The versions of a recipe's artifacts: list, show, diff, promote, rollback, audit.

Versions are folders ``v0001, v0002, ...`` under ``<output_dir>/<recipe name>/``; the
file ``current`` names the one in use. Rolling back and promoting rewrite ``current``
atomically; no version is ever deleted by these functions.

Governance:

* a new run becomes current by itself when its recipe has no ``eval.min`` bars; when it
  has bars, only the first version does (something must be served) and every later one
  waits for :func:`promote`, which checks the bars against the version's measured metrics;
* ``audit.jsonl`` (append-only, one JSON object a line) records who did what, when and
  why: ``run`` (written when a version is committed), ``promote``, ``refused-promote``
  and ``rollback``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmadapt.engine.artifact import CURRENT, read_manifest, versions, write_text_atomic
from mmadapt.errors import ArtifactError, MmadaptError

AUDIT = "audit.jsonl"
ACTIONS = ("run", "promote", "refused-promote", "rollback")


class PromotionError(MmadaptError):
    """A version does not meet the recipe's ``eval.min`` bars, so it cannot become current."""


def recipe_dir(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / name


def _pointer(rdir: Path) -> str | None:
    """The version the ``current`` file names, if that file exists and the version too."""
    pointer = rdir / CURRENT
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    return name if (rdir / name / "manifest.json").is_file() else None


def current_version(rdir: Path) -> str | None:
    pointer = rdir / CURRENT
    if not pointer.is_file():
        found = versions(rdir)
        return found[-1] if found else None
    name = pointer.read_text().strip()
    return name if (rdir / name).is_dir() else None


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


def resolve_version(rdir: Path, version: str | None) -> Path:
    """The folder of ``version`` (None or 'current' = the current one)."""
    if not rdir.is_dir():
        raise ArtifactError("no runs of this recipe yet", path=rdir, fix="run it first: mmadapt run RECIPE")
    name = current_version(rdir) if version in (None, "current") else version
    if name is None or not (rdir / name / "manifest.json").is_file():
        known = ", ".join(versions(rdir)) or "none"
        raise ArtifactError(f"no version {version!r}", path=rdir, fix=f"pick one of: {known}")
    return rdir / name


def show(rdir: Path, version: str | None = None) -> dict[str, Any]:
    return read_manifest(resolve_version(rdir, version))


def rollback(rdir: Path, to: str | None = None, *, reason: str | None = None) -> str:
    """Point ``current`` at ``to`` (default: the version before the current one); return it.

    A rollback is the emergency move and is not held to the bars; it is written to the audit log.
    """
    found = versions(rdir)
    if not found:
        raise ArtifactError("no versions to roll back to", path=rdir, fix="run the recipe first")
    if to is None:
        current = current_version(rdir)
        index = found.index(current) if current in found else len(found)
        if index == 0:
            raise ArtifactError(f"{current} is the oldest version; nothing to roll back to", path=rdir)
        to = found[index - 1]
    target = resolve_version(rdir, to)
    previous = current_version(rdir)
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


# ---------------------------------------------------------------- governance


def user() -> str:
    """Who is acting: ``$MMADAPT_USER``, else the login name."""
    name = os.environ.get("MMADAPT_USER")
    if name:
        return name
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):  # no passwd entry (containers)
        return os.environ.get("USER") or "unknown"


def audit(rdir: Path, what: str, version: str | None, why: str | None = None, **details: Any) -> dict[str, Any]:
    """Append one entry to ``<rdir>/audit.jsonl`` (one write of one line, fsynced); return it."""
    if what not in ACTIONS:
        raise ValueError(f"unknown audit action {what!r}")
    entry = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "who": user(),
        "what": what,
        "version": version,
        "why": why or "",
        **details,
    }
    line = (json.dumps(entry, default=str, ensure_ascii=False) + "\n").encode("utf-8")
    rdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(rdir / AUDIT, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a crash: start a fresh one
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return entry


def read_audit(rdir: Path) -> list[dict[str, Any]]:
    """Every audit entry, oldest first (a torn last line from a crash is skipped)."""
    path = rdir / AUDIT
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def promoted_versions(rdir: Path) -> list[str]:
    """Versions that were ever promoted, in the order of their (last) promotion."""
    order: dict[str, None] = {}
    for entry in read_audit(rdir):
        if entry.get("what") == "promote" and entry.get("version"):
            order.pop(entry["version"], None)
            order[entry["version"]] = None
    return list(order)


def check_bars(metrics: Mapping[str, Any], bars: Mapping[str, float]) -> list[str]:
    """The bars ``metrics`` miss, each as ``'fact_accuracy 0.55 < 0.80'`` (empty when all hold)."""
    failures = []
    for metric, bar in bars.items():
        value = metrics.get(metric)
        if value is None:
            failures.append(f"{metric} not measured (bar {bar:.2f})")
        elif float(value) < float(bar):
            failures.append(f"{metric} {float(value):.2f} < {float(bar):.2f}")
    return failures


def committed(rdir: Path, version: str, manifest: Mapping[str, Any], make_current: bool) -> bool:
    """Called by the artifact writer once ``version`` is in place: move ``current`` by the policy, audit.

    Without ``eval.min`` bars a new version becomes current; with bars only when no version
    is current yet. Returns whether it became current.
    """
    bars = (manifest.get("recipe") or {}).get("eval", {}).get("min") or {}
    becomes = make_current and (not bars or _pointer(rdir) is None)
    if becomes:
        write_text_atomic(rdir / CURRENT, version + "\n")
    failures = check_bars(manifest.get("metrics") or {}, bars)
    if not make_current:
        note = "not made current by the caller"
    elif not bars:
        note = "current: the recipe has no eval.min bars"
    elif becomes:
        note = "current: first version of a recipe with bars"
    else:
        note = "candidate: promote it to make it current"
    audit(
        rdir, "run", version, note, current=becomes, stack=list(manifest.get("stack") or []),
        metrics=dict(manifest.get("metrics") or {}), bars_missed=failures, recipe_hash=manifest.get("recipe_hash"),
    )
    return becomes


def promote(rdir: Path, version: str, recipe: Any, *, reason: str | None = None) -> str:
    """Make ``version`` current if it meets every bar in ``recipe.eval.min``; return its name.

    A refusal is audited (``refused-promote``) and raised as one line with the figures.
    """
    target = resolve_version(rdir, version)
    manifest = read_manifest(target)
    bars = dict(recipe.eval.min)
    failures = check_bars(manifest.get("metrics") or {}, bars)
    if failures:
        audit(rdir, "refused-promote", target.name, reason, bars_missed=failures, bars=bars)
        where = f" in {recipe.source}" if getattr(recipe, "source", None) else ""
        raise PromotionError(
            f"{target.name} does not meet eval.min: {'; '.join(failures)}",
            path=rdir,
            fix=f"improve the version and run again, or change eval.min{where}",
        )
    previous = current_version(rdir)
    write_text_atomic(rdir / CURRENT, target.name + "\n")
    audit(rdir, "promote", target.name, reason, previous=previous, bars=bars, metrics=manifest.get("metrics") or {})
    return target.name
