"""The versions of a recipe's artifacts: list, show, diff, rollback.

Versions are folders ``v0001, v0002, ...`` under ``<output_dir>/<recipe name>/``; the
file ``current`` names the one in use. Rolling back rewrites ``current`` atomically;
no version is ever deleted by these functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmadapt.core.artifact import CURRENT, read_manifest, versions, write_text_atomic
from mmadapt.errors import ArtifactError


def recipe_dir(output_dir: str | Path, name: str) -> Path:
    return Path(output_dir) / name


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


def rollback(rdir: Path, to: str | None = None) -> str:
    """Point ``current`` at ``to`` (default: the version before the current one); return it."""
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
    write_text_atomic(rdir / CURRENT, target.name + "\n")
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
