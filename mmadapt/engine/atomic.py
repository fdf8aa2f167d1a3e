"""Atomic file writes: a temporary file in the same folder, fsynced, renamed over the target.

A reader sees the old content or the new, never a mix; a crash leaves at most a ``.<name>.*``
temporary beside the target. Append-only JSONL logs (the audit, the serve request log) are read
back with :func:`read_json_lines`, which skips a line torn by a crash.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` (indented, a final newline) atomically, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json_lines(path: Path, max_bytes: int | None = None) -> list[dict[str, Any]]:
    """Every whole JSON object line of an append-only log, oldest first (a torn line is skipped); [] when absent.

    ``max_bytes``: only the lines in the file's last ``max_bytes`` (the window's first, partial line is skipped).
    """
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        size = handle.seek(0, 2)
        start = 0 if max_bytes is None else max(0, size - max_bytes)
        handle.seek(start)
        lines = handle.read().split(b"\n")
    out = []
    for line in lines[1:] if start else lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a torn line after a crash (or invalid UTF-8 in it), the empty tail
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
