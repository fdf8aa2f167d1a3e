"""Dataset validation: every problem of a recipe's data at once, each with its file and line.

Loading is validating: each modality has one parser per data format (in its ``data.py``)
that walks a file once, collects every :class:`Problem` and builds the examples.
``Modality.load_data`` runs those parsers and raises one :class:`DataError` for the first
errors (:func:`raise_errors`; warnings never stop a run); ``Modality.validate_data`` runs
the same parsers and returns every problem. ``mmadapt data validate RECIPE`` calls
:func:`validate_data`. This module holds only what every modality shares (no branching
on the modality's name):

* :class:`Problem` — one finding: ``error`` (the run would fail or train on garbage) or
  ``warning`` (the run goes on, but the user should know: resampled audio, leakage ...);
* :func:`scan_jsonl` — a JSONL file read line by line, each bad line a problem;
* :func:`duplicates` and :func:`leakage` — the same id twice in a split, the same
  normalised key (question text, audio hash) in train and eval;
* :func:`raise_errors` — the loader's one-line error for a list of problems;
* :func:`fingerprint` — the sha256 of every data file a run read (for its manifest);
* :func:`table_rows` / :func:`summary` for the CLI's table.

The CLI exits with code 2 when there is at least one error, 0 with warnings only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmadapt.errors import DataError, MmadaptError

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.protocols import DataBundle
    from mmadapt.recipe import Recipe

ERROR = "error"
WARNING = "warning"
MAX_JSONL_BYTES = 200 * 2**20  # the loaders refuse larger files


@dataclass(frozen=True)
class Problem:
    """One finding about a dataset file."""

    severity: str  # "error" | "warning"
    file: str
    line: int | None  # 1-based line of a JSONL/metadata file; None for a whole file
    message: str
    fix: str | None = None

    @classmethod
    def from_error(cls, exc: MmadaptError, file: str | Path | None = None) -> Problem:
        """The problem a loader's one-line error describes (its message without the path prefix)."""
        path = exc.path or (str(file) if file is not None else "-")
        text = str(exc)
        if exc.path and text.startswith(f"{exc.path}: "):
            text = text[len(exc.path) + 2 :]
        if exc.fix and text.endswith(f" — fix: {exc.fix}"):
            text = text[: -len(f" — fix: {exc.fix}")]
        return cls(ERROR, path, None, text, exc.fix)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def error(file: str | Path, line: int | None, message: str, fix: str | None = None) -> Problem:
    return Problem(ERROR, str(file), line, message, fix)


def warning(file: str | Path, line: int | None, message: str, fix: str | None = None) -> Problem:
    return Problem(WARNING, str(file), line, message, fix)


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(p.severity == ERROR for p in problems)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Errors first, then by file and line (stable otherwise)."""
    return sorted(problems, key=lambda p: (p.severity != ERROR, p.file, p.line or 0))


def bundle_or_raise(bundle: DataBundle | None, problems: list[Problem], paths: list[Path]) -> DataBundle:
    """What a modality's ``load_data`` returns: the parsed bundle with the fingerprint of the data
    files in ``paths``, or one DataError for the first errors (:func:`raise_errors`)."""
    raise_errors(problems)
    assert bundle is not None  # read_data gives a bundle whenever there is no error
    bundle.fingerprint, bundle.files = fingerprint(paths)
    return bundle


def raise_errors(problems: Iterable[Problem], *, limit: int = 10) -> None:
    """Raise one one-line :class:`DataError` when ``problems`` hold an error (warnings never stop a run).

    It names the file of the first error (in :func:`sort_problems` order, the first that
    ``mmadapt data validate`` lists), up to ``limit`` of that file's errors as ``line N: ...``,
    how many more there are, and the fix (the errors' own when they share one).
    """
    errors = [p for p in sort_problems(problems) if p.severity == ERROR]
    if not errors:
        return
    first = errors[0]
    shown = [p for p in errors if p.file == first.file][:limit]
    parts = [f"line {p.line}: {p.message}" if p.line is not None else p.message for p in shown]
    if len(errors) > len(shown):
        parts.append(f"and {len(errors) - len(shown)} more")
    fixes = {p.fix for p in errors}
    fix = first.fix if len(fixes) == 1 and first.fix else "run `mmadapt data validate RECIPE` for every problem and its fix"
    raise DataError("; ".join(parts), path=first.file, fix=fix)


def validate_data(recipe: Recipe) -> list[Problem]:
    """Every problem of ``recipe``'s data, errors first."""
    from mmadapt.protocols import get_modality

    modality = get_modality(recipe.modality)
    return sort_problems(modality.validate_data(recipe))


def table_rows(problems: Iterable[Problem], root: Path | None = None) -> list[dict[str, Any]]:
    """Rows for :func:`mmadapt.govern.report.table`: severity, file (relative to ``root``), line, problem."""
    rows = []
    for p in problems:
        file = p.file
        if root is not None:
            try:
                file = str(Path(p.file).resolve().relative_to(root.resolve()))
            except ValueError:
                pass
        message = f"{p.message} (fix: {p.fix})" if p.fix else p.message
        rows.append({"severity": p.severity, "file": file, "line": p.line if p.line is not None else "-", "problem": message})
    return rows


def summary(problems: list[Problem]) -> str:
    errors = sum(p.severity == ERROR for p in problems)
    warnings = len(problems) - errors
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


# ---------------------------------------------------------------- shared checks


def check_file(path: Path, what: str, *, max_bytes: int = MAX_JSONL_BYTES) -> Problem | None:
    """An error when ``path`` is not a readable, non-empty file of at most ``max_bytes``."""
    if not path.exists():
        return error(path, None, f"{what} not found", "check the path in the recipe's data section")
    if not path.is_file():
        return error(path, None, f"{what} is not a file", "point the recipe at a file")
    size = path.stat().st_size
    if size == 0:
        return error(path, None, f"{what} is empty (0 bytes)", "add records, or remove the key from the recipe")
    if size > max_bytes:
        return error(path, None, f"{what} is {size / 2**20:.0f} MiB; the limit is {max_bytes / 2**20:.0f} MiB", "split the file")
    return None


def read_checked_text(path: Path, problems: list[Problem], what: str, encoding: str = "utf-8") -> str | None:
    """The text of a data file, or None with its problem added (missing, empty, too large, not UTF-8, unreadable)."""
    bad = check_file(path, what)
    if bad is not None:
        problems.append(bad)
        return None
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        problems.append(error(path, None, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8"))
    except OSError as exc:
        problems.append(error(path, None, f"cannot read ({exc.strerror})", "check its permissions"))
    return None


def scan_jsonl(path: Path, problems: list[Problem], *, what: str = "JSONL file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each good line of a JSONL file; bad lines and file problems go to ``problems``."""
    text = read_checked_text(path, problems, what)
    if text is None:
        return
    any_line = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        any_line = True
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append(error(path, number, f"invalid JSON ({getattr(exc, 'msg', exc)})", "one JSON object per line"))
            continue
        if not isinstance(record, dict):
            problems.append(error(path, number, f"expected a JSON object, got {type(record).__name__}"))
            continue
        yield number, record
    if not any_line:
        problems.append(error(path, None, f"{what} holds no records (only blank lines)", "add one JSON object per line"))


def duplicates(entries: Iterable[tuple[str, str, int | None]], what: str = "id") -> list[Problem]:
    """An error for every (key, file, line) whose key was already seen (naming the first occurrence)."""
    first: dict[str, tuple[str, int | None]] = {}
    out = []
    for key, file, line in entries:
        if key in first:
            where = first[key]
            at = f"{Path(where[0]).name}:{where[1]}" if where[1] is not None else Path(where[0]).name
            out.append(error(file, line, f"duplicate {what} {key!r} (first at {at})", f"give each record a unique {what}"))
        else:
            first[key] = (file, line)
    return out


def leakage(
    train: Iterable[tuple[str, str, int | None]], evaluation: Iterable[tuple[str, str, int | None]], what: str
) -> list[Problem]:
    """A warning for every eval (key, file, line) whose key also occurs in train: the eval score would be inflated."""
    seen: dict[str, tuple[str, int | None]] = {}
    for key, file, line in train:
        seen.setdefault(key, (file, line))
    out = []
    for key, file, line in evaluation:
        if key in seen:
            tfile, tline = seen[key]
            out.append(
                warning(
                    file,
                    line,
                    f"train/eval leakage: {what} identical to {Path(tfile).name}:{tline if tline is not None else '-'}",
                    "drop it from one of the splits, or the eval score overstates what was learned",
                )
            )
    return out


_SPACE = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]")


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the key for 'identical question'."""
    return _SPACE.sub(" ", _PUNCT.sub("", text.casefold())).strip()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(paths: list[Path]) -> tuple[str, list[str]]:
    """sha256 over the content of every file under ``paths`` (sorted), and the file list."""
    digest = hashlib.sha256()
    files: list[str] = []
    for path in paths:
        members = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in members:
            name = file.relative_to(path.parent).as_posix()
            digest.update(name.encode() + b"\0")
            digest.update(hashlib.sha256(file.read_bytes()).digest())
            files.append(name)
    return digest.hexdigest(), files
