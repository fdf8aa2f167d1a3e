"""The local cache of converted models, verified by hash.

Conversions (GGUF -> HF folder, CTranslate2 Whisper -> HF folder, ...) are done once
and cached under ``~/.cache/mmadapt`` (override with ``MMADAPT_CACHE``). Each cached
folder carries ``.mmadapt-hashes.json`` with the sha256 of every file; a folder that
does not match its hashes is rebuilt. Builds go to a temporary sibling and are renamed
into place, so a crash never leaves a half-built cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HASHES_FILE = ".mmadapt-hashes.json"


def cache_dir() -> Path:
    """The root of mmadapt's cache (``$MMADAPT_CACHE`` or ``~/.cache/mmadapt``)."""
    root = os.environ.get("MMADAPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mmadapt")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _folder_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != HASHES_FILE
    }


def write_hashes(folder: Path) -> None:
    """Write ``folder``'s hash list (every file but the list itself), the one :func:`verify` checks."""
    (folder / HASHES_FILE).write_text(json.dumps(_folder_hashes(folder), indent=1, sort_keys=True))


def verify(folder: Path) -> bool:
    """True when ``folder`` holds exactly the files its hash list names, unchanged."""
    listing = folder / HASHES_FILE
    if not listing.is_file():
        return False
    try:
        expected = json.loads(listing.read_text())
    except (OSError, ValueError):
        return False
    return expected == _folder_hashes(folder)


def cached_build(name: str, fingerprint: str, build: Callable[[Path], None], *, announce: str | None = None) -> Path:
    """Return the cache folder ``name-<fingerprint>``, building it with ``build(tmp)`` if absent or corrupt.

    ``fingerprint`` identifies the source (e.g. the sha256 of the file converted), so a
    new source version gets a new folder. ``announce`` (what the build does) is printed as one
    line on stderr when, and only when, a build runs, with where the result is cached.
    """
    root = cache_dir()
    target = root / f"{name}-{fingerprint[:16]}"
    if target.is_dir() and verify(target):
        return target
    if announce:
        print(f"{announce} (once: cached in {target})", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        build(tmp)
        write_hashes(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
