"""Live traffic as ``mmadapt serve`` logged it: where the logs are, and their requests joined with feedback.

The server (:mod:`mmadapt.serve.log`, which documents the line format) appends to
``<recipe folder>/serve/requests.jsonl`` and ``serve/feedback.jsonl``; ``ab --from-log``,
``drift --from-log`` and the dashboard read them here (govern may not import serve, so the
file names live here and the server imports them).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmadapt.engine.atomic import read_json_lines, write_text_atomic

SERVE_DIR = "serve"
REQUESTS = "requests.jsonl"
FEEDBACK = "feedback.jsonl"
FILES = "files"


def requests_path(rdir: Path) -> Path:
    return Path(rdir) / SERVE_DIR / REQUESTS


def feedback_path(rdir: Path) -> Path:
    return Path(rdir) / SERVE_DIR / FEEDBACK


def read_requests(rdir: Path) -> list[dict[str, Any]]:
    """Every whole request line, oldest first (a torn last line after a crash is skipped)."""
    return read_json_lines(requests_path(rdir))


@dataclass
class Rated:
    """One answered request with its feedback score (the last one sent for its id)."""

    id: str
    time: str
    version: str
    score: float
    user: str | None


@dataclass
class Joined:
    rated: list[Rated]  # oldest request first
    feedback_lines: int
    unmatched: int  # feedback naming no answered request of the log (a failed one, or a log since rotated)


def rated_requests(rdir: Path) -> Joined:
    """Feedback joined with the request log by request id: which version answered, when, and its score.

    Only answered requests count (status 200). The version is the request line's (the one that
    answered), not the feedback's copy; a request scored twice keeps its last score.
    """
    answered = {e["id"]: e for e in read_requests(rdir) if e.get("status") == 200 and isinstance(e.get("id"), str) and e.get("version")}
    lines = read_json_lines(feedback_path(rdir))
    scores: dict[str, float] = {}
    unmatched = 0
    for line in lines:
        rid, score = line.get("id"), line.get("score")
        if rid not in answered or isinstance(score, bool) or not isinstance(score, int | float):
            unmatched += 1
            continue
        scores[rid] = float(score)
    rated = [Rated(rid, answered[rid].get("time") or "", answered[rid]["version"], score, answered[rid].get("user"))
             for rid, score in scores.items()]
    rated.sort(key=lambda r: (r.time, r.id))
    return Joined(rated, len(lines), unmatched)


def recent_requests(rdir: Path, max_bytes: int = 4 * 2**20) -> list[dict[str, Any]]:
    """The request lines in the last ``max_bytes`` of the log (the dashboard's view: a long-running
    server's log is not read whole on every page load)."""
    return read_json_lines(requests_path(rdir), max_bytes)


def recent_feedback(rdir: Path, max_bytes: int = 4 * 2**20) -> list[dict[str, Any]]:
    return read_json_lines(feedback_path(rdir), max_bytes)


DRIFT = "drift.json"  # the last `drift --from-log` result, shown on the dashboard


def write_drift(rdir: Path, result: dict[str, Any]) -> None:
    (Path(rdir) / SERVE_DIR).mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(rdir) / SERVE_DIR / DRIFT, json.dumps({"checked": now_iso(), **result}, indent=2, default=str))


def read_drift(rdir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((Path(rdir) / SERVE_DIR / DRIFT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
