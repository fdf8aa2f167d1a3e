"""The request log and the feedback log of ``mmadapt serve``: one JSON object a line, append-only.

Files (under the recipe's folder of versions, ``<output_dir>/<recipe name>/``):

``serve/requests.jsonl`` — one line per request that named a served recipe (an unknown model, an unreadable body,
a bad key or an oversized body names none and is not logged)::

    {"id": "req-3f2a...",            # the request's id: also the response's `id`, `mmadapt.id`
                                     #   and its x-request-id header; what /v1/feedback names
     "time": "2026-12-02T03:04:05.678Z",   # when the request arrived (UTC, ms)
     "recipe": "zentrix-support",
     "version": "v0003",             # the version that answered (null when none was chosen)
     "route": "current",             # how it was chosen: "current" | "split" | "pinned" (recipe@vNNNN)
     "endpoint": "chat.completions", # audio.transcriptions | images.generations
     "user": "u-17",                 # the body's `user` or the x-user header; null when neither
     "status": 200,                  # the HTTP status sent (400, 429, 500 are logged too)
     "latency_ms": 41.7,             # arrival -> response ready (queue wait included)
     "stream": false,
     "input": {...},                 # the request's fields without `model`/`user` (chat: messages;
                                     #   images: prompt, n ...); an upload as
                                     #   "file": {"name", "bytes", "sha256"}; null when redacted
     "input_sha256": "9c1e...",      # only with --redact-inputs: sha256 of the canonical JSON of `input`
     "output": [...],                # one value per prediction (Modality.output_json: the answer, the
                                     #   transcript; images as files under serve/files/<id>/); null on error
     "error": null,                  # the error message when status is not 200
     "guard": [...]}                 # only for a recipe with a guard: per prediction {refused, escalated,
                                     #   redactions, reason, kinds} (what was removed is never logged)

``serve/feedback.jsonl`` — one line per ``POST /v1/feedback``::

    {"id": "req-3f2a...", "time": "...", "recipe": "zentrix-support", "version": "v0003",
     "score": 1.0, "comment": null}

Each line is written with ONE ``os.write`` of the whole line on a file descriptor opened with
``O_APPEND`` (under a lock per file in this process), so concurrent requests never interleave
and a reader only ever sees whole lines, except a torn last line after a crash: a reader skips a
line that does not parse (:func:`mmadapt.govern.livelog.read_requests`), and the next write starts a fresh line.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from mmadapt.govern.livelog import FILES, SERVE_DIR, feedback_path, now_iso, read_requests, requests_path


def canonical_sha256(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()


class JsonlAppender:
    """Append whole JSON lines to one file: one ``os.write`` per line on an ``O_APPEND`` descriptor."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def append(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                size = os.fstat(self._fd).st_size
                if size and _last_byte(self.path, size) != b"\n":  # a torn line from a crash: start a fresh one
                    line = b"\n" + line
            os.write(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(size - 1)
        return handle.read(1)


class ServeLog:
    """The request and feedback logs of the served recipes, and which recipe each request id belongs to."""

    KNOWN_IDS = 100_000  # ids remembered in memory; older ones are looked up in the files

    def __init__(self, recipe_dirs: dict[str, Path], *, redact_inputs: bool = False):
        self.recipe_dirs = recipe_dirs
        self.redact_inputs = redact_inputs
        self._requests = {name: JsonlAppender(requests_path(d)) for name, d in recipe_dirs.items()}
        self._feedback = {name: JsonlAppender(feedback_path(d)) for name, d in recipe_dirs.items()}
        self._ids: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._ids_lock = threading.Lock()

    def files_dir(self, recipe: str, request_id: str) -> Path:
        return self.recipe_dirs[recipe] / SERVE_DIR / FILES / request_id

    def request(self, recipe: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Append one request line (``entry`` holds the keys of the module docstring; ``input`` is
        replaced by ``input_sha256`` with --redact-inputs)."""
        entry = dict(entry)
        if self.redact_inputs:
            entry["input_sha256"] = canonical_sha256(entry.get("input"))
            entry["input"] = None
        self._requests[recipe].append(entry)
        with self._ids_lock:
            self._ids[entry["id"]] = (recipe, entry.get("version"))
            while len(self._ids) > self.KNOWN_IDS:
                self._ids.popitem(last=False)
        return entry

    def find(self, request_id: str) -> tuple[str, str | None] | None:
        """(recipe, version) of a logged request id, or None."""
        with self._ids_lock:
            if request_id in self._ids:
                return self._ids[request_id]
        for name, rdir in self.recipe_dirs.items():
            for entry in read_requests(rdir):
                if entry.get("id") == request_id:
                    return name, entry.get("version")
        return None

    def feedback(self, request_id: str, score: float, comment: str | None = None) -> dict[str, Any] | None:
        """Append a feedback line for a logged request; None when the id is unknown."""
        found = self.find(request_id)
        if found is None:
            return None
        recipe, version = found
        entry = {"id": request_id, "time": now_iso(), "recipe": recipe, "version": version, "score": score, "comment": comment}
        self._feedback[recipe].append(entry)
        return entry

    def close(self) -> None:
        for appender in (*self._requests.values(), *self._feedback.values()):
            appender.close()
