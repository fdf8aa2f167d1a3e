"""Artifacts: written atomically, safetensors only, each with a manifest.

Layout: ``<output_dir>/<recipe name>/<version>/`` holding ``manifest.json``,
``predictions.jsonl`` and one folder per strategy (``prompt/``, ``retrieval/``,
``adapter/``, ``full/``). A version is built in a temporary sibling
(``.tmp-<pid>-*``) and renamed into place only once complete, so a crash leaves
no half artifact and the previous version intact; the ``current`` file names the
version in use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmadapt.engine.atomic import fsync_dir, write_json_atomic, write_text_atomic  # noqa: F401 - re-exported
from mmadapt.engine.versions import CURRENT, VERSION_RE, committed, versions  # noqa: F401 - re-exported
from mmadapt.errors import ArtifactError
from mmadapt.models.resolve import check_safetensors_only

MANIFEST = "manifest.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(recipe_dir: Path) -> list[Path]:
    """Remove ``.tmp-<pid>-*`` folders left by runs that were killed."""
    removed = []
    if not recipe_dir.is_dir():
        return removed
    for p in recipe_dir.glob(".tmp-*"):
        match = re.match(r"^\.tmp-(\d+)-", p.name)
        if match and _pid_alive(int(match.group(1))) and int(match.group(1)) != os.getpid():
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


class ArtifactWriter:
    """Build one version in a temporary folder; ``commit`` renames it into place."""

    def __init__(self, output_dir: str | Path, recipe_name: str):
        self.recipe_dir = Path(output_dir) / recipe_name
        try:
            self.recipe_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self.recipe_dir)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=self.recipe_dir))
        except OSError as exc:
            raise ArtifactError(
                f"cannot write artifacts: {exc.strerror}", path=self.recipe_dir, fix="choose a writable output_dir (--set output_dir=...)"
            ) from None
        self.committed: Path | None = None

    def part_dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, manifest: dict[str, Any], make_current: bool = True) -> Path:
        """Write the manifest, rename the folder into the next version; the registry moves ``current`` and audits."""
        check_safetensors_only(self.tmp, publish=True)
        existing = versions(self.recipe_dir)
        number = int(VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1
        while True:
            version = f"v{number:04d}"
            target = self.recipe_dir / version
            if not target.exists():
                break
            number += 1
        manifest = {**manifest, "version": version}
        try:
            write_json_atomic(self.tmp / MANIFEST, manifest)
            fsync_dir(self.tmp)
            os.rename(self.tmp, target)
            fsync_dir(self.recipe_dir)
            committed(self.recipe_dir, version, manifest, make_current)
        except OSError as exc:
            raise ArtifactError(
                f"cannot write the artifact: {exc.strerror}", path=self.recipe_dir, fix="free disk space or choose another output_dir"
            ) from None
        self.committed = target
        return target

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()


def read_manifest(version_dir: str | Path) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("no manifest.json: not an mmadapt artifact", path=version_dir) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"unreadable manifest: {exc}", path=path) from None
