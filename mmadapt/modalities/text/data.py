"""Text data: Q/A JSONL splits and a knowledge base of documents cut into passages.

A split is JSONL, one object per line with ``question`` and ``answer`` (optional
``id``, ``key_fact``). A knowledge base is a folder of ``.md``/``.txt`` files, or a
JSONL file of ``{"id", "text"}`` records. Every problem in a file is reported at once,
with its line number.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from mmadapt.errors import DataError
from mmadapt.protocols import Example

MAX_FILE_BYTES = 200 * 2**20
KB_SUFFIXES = (".md", ".txt")


@dataclass
class Passage:
    id: str  # "<file>#<n>"
    source: str  # file name
    title: str
    text: str


def read_jsonl_split(path: Path, split: str) -> list[Example]:
    """Read a Q/A split; raise one DataError listing every bad line."""
    if not path.is_file():
        raise DataError("not a file", path=path, fix="point data.train / data.eval at a .jsonl file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError("larger than 200 MiB", path=path, fix="split the file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError("not UTF-8 text", path=path, fix="save it as UTF-8 JSONL") from None
    examples, problems, seen = [], [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append(f"line {number}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: expected an object")
            continue
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not question.strip():
            problems.append(f"line {number}: 'question' must be a non-empty string")
            continue
        if answer is not None and not isinstance(answer, str):
            problems.append(f"line {number}: 'answer' must be a string")
            continue
        ident = str(record.get("id") or f"{split}-{number}")
        if ident in seen:
            problems.append(f"line {number}: duplicate id {ident!r}")
            continue
        seen.add(ident)
        meta = {k: v for k, v in record.items() if k not in ("id", "question", "answer")}
        examples.append(Example(ident, question.strip(), (answer or "").strip() or None, meta))
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DataError(shown, path=path, fix="each line must be a JSON object with 'question' and 'answer'")
    if not examples:
        raise DataError("no examples", path=path, fix="add JSONL lines with 'question' and 'answer'")
    return examples


def _chunk_words(text: str, size: int) -> list[str]:
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks, current = [], []
    for para in paragraphs:
        words = para.split()
        if current and len(current) + len(words) > size:
            chunks.append(" ".join(current))
            current = []
        while len(words) > size:
            chunks.append(" ".join(words[:size]))
            words = words[size:]
        current.extend(words)
    if current:
        chunks.append(" ".join(current))
    return chunks


def read_knowledge(path: Path, chunk_words: int = 120) -> list[Passage]:
    """Passages of at most ``chunk_words`` words, each carrying its document's title."""
    passages: list[Passage] = []
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KB_SUFFIXES)
        if not files:
            raise DataError("no .md or .txt documents", path=path, fix="put the knowledge base documents in this folder")
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise DataError("not UTF-8 text", path=file, fix="save it as UTF-8") from None
            lines = text.strip().splitlines()
            title = lines[0].lstrip("# ").strip() if lines else file.stem
            body = "\n".join(lines[1:]) if lines and lines[0].startswith("#") else text
            for n, chunk in enumerate(_chunk_words(body, chunk_words)):
                passages.append(Passage(f"{file.relative_to(path)}#{n}", str(file.relative_to(path)), title, chunk))
    elif path.is_file():
        for example in read_jsonl_records(path):
            passages.append(Passage(example["id"], example["id"], example.get("title", ""), example["text"]))
    else:
        raise DataError("knowledge base not found", path=path, fix="point data.knowledge at a folder or a .jsonl file")
    if not passages:
        raise DataError("knowledge base is empty", path=path, fix="add documents with text")
    return passages


def read_jsonl_records(path: Path) -> list[dict]:
    records, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append(f"line {number}: invalid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or "id" not in record:
            problems.append(f"line {number}: expected an object with 'id' and 'text'")
            continue
        records.append(record)
    if problems:
        raise DataError("; ".join(problems[:10]), path=path, fix="each line needs 'id' and 'text'")
    return records


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
