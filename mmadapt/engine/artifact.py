"""Artifacts: written atomically, safetensors only, each with a manifest.

Layout: ``<output_dir>/<recipe name>/<version>/`` holding ``manifest.json``,
``predictions.jsonl`` and one folder per strategy (``prompt/``, ``retrieval/``,
``adapter/``, ``full/``). A version is built in a temporary sibling
(``.tmp-<host>-<pid>-*``) and renamed into place only once complete, so a crash leaves
no half artifact and the previous version intact; the ``current`` file names the
version in use.

Many runs of one recipe may commit at once, from several processes or hosts sharing the
folder: the number is taken and the folder renamed in under the recipe folder's lock
(:mod:`mmadapt.engine.locks`), so each gets its own version and none is lost.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from mmadapt.engine.atomic import fsync_dir, write_json_atomic, write_text_atomic  # noqa: F401 - re-exported
from mmadapt.engine.locks import recipe_lock
from mmadapt.engine.versions import CURRENT, VERSION_RE, committed, versions  # noqa: F401 - re-exported
from mmadapt.errors import ArtifactError
from mmadapt.models.resolve import check_safetensors_only

MANIFEST = "manifest.json"
_MAX_TRIES = 1000


_TMP_RE = re.compile(r"^\.tmp-(?:(?P<host>.+)-)?(?P<pid>\d+)-[a-z0-9_]+$")  # .tmp-<host>-<pid>-<random>; old: no host
_LIVE: set[str] = set()  # real paths of this process's writers' folders not yet committed or aborted


def _host() -> str:
    """This machine's name as it appears in temporary folder names (only ``[A-Za-z0-9._-]``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(path: Path, host: str, foreign_older_than: float | None) -> bool:
    match = _TMP_RE.match(path.name)
    if match is None:
        return False  # not ours: leave it
    if match["host"] is not None and match["host"] != host:  # another machine: its pids mean nothing here
        if foreign_older_than is None:
            return False
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime > foreign_older_than
        return False
    pid = int(match["pid"])
    if pid == os.getpid():  # this process: stale unless one of its writers still builds it
        return os.path.realpath(path) not in _LIVE
    return not _pid_alive(pid)


def clean_stale_temporaries(recipe_dir: Path, *, foreign_older_than: float | None = None) -> list[Path]:
    """Remove the ``.tmp-<host>-<pid>-*`` folders of this host's dead runs; return them.

    A live process's folder is never touched, nor is another host's (whether that run is alive
    cannot be seen from here) unless ``foreign_older_than`` seconds are given and its folder has
    not changed for that long. Old names without a host (``.tmp-<pid>-*``) count as this host's.
    """
    removed: list[Path] = []
    if not recipe_dir.is_dir():
        return removed
    host = _host()
    for p in recipe_dir.glob(".tmp-*"):
        if _is_stale(p, host, foreign_older_than):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _write_failure(exc: OSError, recipe_dir: Path, what: str) -> ArtifactError:
    """A failed write as one line that names the real cause and its fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = "free disk space or choose another output_dir"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "choose a writable output_dir"
    else:
        fix = "check the output_dir's file system; the previous versions and `current` are intact"
    return ArtifactError(f"{what}: {exc.strerror or exc}", path=recipe_dir, fix=fix)


class ArtifactWriter:
    """Build one version in a temporary folder; ``commit`` renames it into place."""

    def __init__(self, output_dir: str | Path, recipe_name: str):
        self.recipe_dir = Path(output_dir) / recipe_name
        try:
            self.recipe_dir.mkdir(parents=True, exist_ok=True)
            clean_stale_temporaries(self.recipe_dir)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{_host()}-{os.getpid()}-", dir=self.recipe_dir))
        except OSError as exc:
            raise ArtifactError(
                f"cannot write artifacts: {exc.strerror}", path=self.recipe_dir, fix="choose a writable output_dir (--set output_dir=...)"
            ) from None
        _LIVE.add(os.path.realpath(self.tmp))
        self.committed: Path | None = None

    def part_dir(self, name: str) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, manifest: dict[str, Any], make_current: bool = True) -> Path:
        """Rename the folder into the next free version (under the recipe lock); the registry moves ``current`` and audits.

        Any failure removes the temporary folder and raises one ArtifactError naming the cause.
        """
        placed = None
        try:
            check_safetensors_only(self.tmp, publish=True)
            with recipe_lock(self.recipe_dir):
                placed, manifest = self._rename_into_next_version(manifest)
                self.committed = placed
                committed(self.recipe_dir, placed.name, manifest, make_current)
        except OSError as exc:
            what = "cannot write the artifact" if placed is None else f"{placed.name} is written, but not recorded"
            raise _write_failure(exc, self.recipe_dir, what) from None
        finally:
            if placed is None:
                self.abort()
        return placed

    def _rename_into_next_version(self, manifest: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
        """Take the next free number; if the name was taken after all (a writer without the lock), the next."""
        existing = versions(self.recipe_dir)
        number = int(VERSION_RE.match(existing[-1]).group(1)) + 1 if existing else 1
        for _ in range(_MAX_TRIES):
            version = f"v{number:04d}"
            target = self.recipe_dir / version
            number += 1
            if target.exists():  # e.g. a folder without a manifest (an interrupted copy)
                continue
            named = {**manifest, "version": version}
            write_json_atomic(self.tmp / MANIFEST, named)
            fsync_dir(self.tmp)
            try:
                os.rename(self.tmp, target)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            fsync_dir(self.recipe_dir)
            _LIVE.discard(os.path.realpath(self.tmp))
            return target, named
        raise ArtifactError(f"no free version name after {_MAX_TRIES} tries", path=self.recipe_dir)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        _LIVE.discard(os.path.realpath(self.tmp))

    def __enter__(self) -> ArtifactWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed is None:
            self.abort()


def read_part_json(part_dir: Path, name: str) -> dict[str, Any]:
    """The JSON record a strategy wrote into its part (e.g. ``prompt.json``); one ArtifactError if it is unreadable."""
    try:
        return json.loads((part_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {name}: {str(exc).splitlines()[0]}", path=part_dir, fix="re-run the recipe") from None


def read_manifest(version_dir: str | Path) -> dict[str, Any]:
    path = Path(version_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError("no manifest.json: not an mmadapt artifact", path=version_dir) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"unreadable manifest: {exc}", path=path) from None
