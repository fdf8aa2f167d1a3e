"""Where a recipe's versions live on disk: allocation is the artifact writer's, the ``current``
pointer and the append-only audit log are here.

``<output_dir>/<recipe name>/`` holds the versions ``v0001, v0002, ...``, the file ``current``
naming the one in use, and ``audit.jsonl`` (one JSON object a line: who did what, when and why).
The engine writes through this module when a run commits (:func:`committed` applies the
current-pointer policy); :mod:`mmadapt.govern.registry` lists, promotes and rolls back on top of it.

Every move of ``current`` and every audit line happens under the recipe folder's lock
(:func:`mmadapt.engine.locks.recipe_lock`), so the audit's order is the order of the moves and its
lines stay whole even where ``O_APPEND`` is not atomic (NFS clients on several hosts).

Policy at commit: a new run becomes current by itself when its recipe has no ``eval.min`` bars;
when it has bars, only the first version does (something must be served) and every later one
waits for ``registry promote``, which checks the bars against the version's measured metrics.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmadapt.engine.atomic import read_json_lines, write_text_atomic
from mmadapt.engine.locks import recipe_lock
from mmadapt.errors import ArtifactError

CURRENT = "current"
VERSION_RE = re.compile(r"^v(\d{4,})$")
AUDIT = "audit.jsonl"
ACTIONS = ("run", "promote", "refused-promote", "rollback")


def versions(recipe_dir: Path) -> list[str]:
    """The complete versions under ``recipe_dir``, oldest first."""
    if not recipe_dir.is_dir():
        return []
    found = [p.name for p in recipe_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name) and (p / "manifest.json").is_file()]
    return sorted(found, key=lambda name: int(VERSION_RE.match(name).group(1)))


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


def resolve_version(rdir: Path, version: str | None) -> Path:
    """The folder of ``version`` (None or 'current' = the current one)."""
    if not rdir.is_dir():
        raise ArtifactError("no runs of this recipe yet", path=rdir, fix="run it first: mmadapt run RECIPE")
    name = current_version(rdir) if version in (None, "current") else version
    if name is None or not (rdir / name / "manifest.json").is_file():
        known = ", ".join(versions(rdir)) or "none"
        raise ArtifactError(f"no version {version!r}", path=rdir, fix=f"pick one of: {known}")
    return rdir / name


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
    """Append one entry to ``<rdir>/audit.jsonl`` (one write of one line, fsynced, under the recipe lock)."""
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
    with recipe_lock(rdir):
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
    return read_json_lines(rdir / AUDIT)


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

    Without ``eval.min`` bars or ``eval.suites`` a new version becomes current; with either, only
    when no version is current yet (later ones wait for ``registry promote``). Returns whether it became current. The pointer and the audit line are
    written under one hold of the recipe lock (the writer already holds it: it is reentrant).
    """
    with recipe_lock(rdir):
        return _committed(rdir, version, manifest, make_current)


def _committed(rdir: Path, version: str, manifest: Mapping[str, Any], make_current: bool) -> bool:
    section = (manifest.get("recipe") or {}).get("eval", {})
    bars = section.get("min") or {}
    gated = bool(bars or section.get("suites"))  # suites are bars too: registry promote checks them
    becomes = make_current and (not gated or _pointer(rdir) is None)
    if becomes:
        write_text_atomic(rdir / CURRENT, version + "\n")
    failures = check_bars(manifest.get("metrics") or {}, bars)
    if not make_current:
        note = "not made current by the caller"
    elif not gated:
        note = "current: the recipe has no eval.min bars or eval.suites"
    elif becomes:
        note = "current: first version of a recipe with bars"
    else:
        note = "candidate: promote it to make it current"
    audit(
        rdir, "run", version, note, current=becomes, stack=list(manifest.get("stack") or []),
        metrics=dict(manifest.get("metrics") or {}), bars_missed=failures, recipe_hash=manifest.get("recipe_hash"),
    )
    return becomes
