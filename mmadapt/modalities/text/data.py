"""Text data: Q/A JSONL splits and a knowledge base of documents cut into passages.

A split is JSONL, one object per line with ``question`` and ``answer`` (optional
``id``, ``key_fact``). A knowledge base is a folder of ``.md``/``.txt`` files, or a
JSONL file of ``{"id", "text"}`` records.

One parser per format (:func:`parse_qa_split`, :func:`parse_knowledge`) walks a file once,
adds every problem to a list (with its line) and returns what it could build;
:func:`read_data` runs them over a recipe's data, and both :func:`load_data` (raise on the
first errors) and :func:`validate_data` (report them all) use it, so a run and
``mmadapt data validate`` apply the same rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmadapt.engine import validate as v
from mmadapt.modalities.text import formats
from mmadapt.modalities.text.chat import check_template
from mmadapt.protocols import DataBundle, Example

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe

MAX_FILE_BYTES = v.MAX_JSONL_BYTES
KB_SUFFIXES = (".md", ".txt")


@dataclass
class Passage:
    id: str  # "<file>#<n>"
    source: str  # file name
    title: str
    text: str


def parse_qa_split(
    path: Path,
    split: str,
    problems: list[v.Problem],
    *,
    max_seq_len: int | None = None,
    keys: list[tuple[str, str, int | None]] | None = None,
) -> list[Example]:
    """The examples of a Q/A split; every problem of the file goes to ``problems``.

    Errors: unreadable file, bad JSON, a missing question, a non-string answer, an empty
    train answer, duplicate ids, no usable line. Warnings: an empty eval answer, an example
    longer than ``max_seq_len`` tokens (~4 characters a token: truncated in training; pass it
    for the train split). ``keys`` receives
    (normalised question, file, line) of each example, for the train/eval leakage check.
    """
    examples: list[Example] = []
    ids: list[tuple[str, str, int | None]] = []
    for number, record in v.scan_jsonl(path, problems, what=f"the {split} split"):
        example = _qa_example(path, number, record, split, problems, max_seq_len, keys)
        if example is not None:
            ids.append((example.id, str(path), number))
            examples.append(example)
    return _finish_split(path, split, examples, ids, problems, "add lines with 'question' and 'answer'")


def _qa_example(path, number, record, split, problems, max_seq_len, keys) -> Example | None:
    """One Q/A record as an Example, or None with its problem added (the rules of :func:`parse_qa_split`)."""
    question, answer = record.get("question"), record.get("answer")
    if not isinstance(question, str) or not question.strip():
        problems.append(v.error(path, number, "'question' must be a non-empty string", "add the question"))
        return None
    if answer is not None and not isinstance(answer, str):
        problems.append(v.error(path, number, f"'answer' must be a string, got {type(answer).__name__}"))
        return None
    if not (answer or "").strip():
        if split == "train":
            problems.append(v.error(path, number, "empty answer: nothing to train on", "add the answer or drop the line"))
        else:
            problems.append(v.warning(path, number, "empty answer: every metric scores it 0", "add the reference answer"))
    _check_length(path, number, len(question) + len(answer or ""), max_seq_len, problems)
    ident = str(record.get("id") or f"{split}-{number}")
    if keys is not None:
        keys.append((v.normalize_text(question), str(path), number))
    meta = {k: val for k, val in record.items() if k not in ("id", "question", "answer")}
    return Example(ident, question.strip(), (answer or "").strip() or None, meta)


def _check_length(path, number, size: int, max_seq_len: int | None, problems: list[v.Problem]) -> None:
    if max_seq_len is not None and size > max_seq_len * 4:
        problems.append(
            v.warning(
                path,
                number,
                f"{size} characters (~{size // 4} tokens) > train.max_seq_len {max_seq_len}: truncated in training",
                "shorten it or raise train.max_seq_len",
            )
        )


def _finish_split(path, split, examples, ids, problems, fix) -> list[Example]:
    problems.extend(v.duplicates(ids))
    if not examples and path.is_file() and path.stat().st_size:
        if not any(p.file == str(path) and p.line is None for p in problems):
            problems.append(v.error(path, None, f"the {split} split holds no usable examples", fix))
    return examples


def parse_split(
    path: Path,
    ref: str,
    split: str,
    problems: list[v.Problem],
    *,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    max_seq_len: int | None = None,
    keys: list[tuple[str, str, int | None]] | None = None,
) -> list[Example]:
    """The examples of a split in any table form (formats.py) and any format: Q/A records as in
    :func:`parse_qa_split`; a conversation is one train example (every assistant turn learned) or
    one eval example per assistant turn. Every problem goes to ``problems`` with its line or row."""
    columns = columns or {}
    chosen = None if fmt == "auto" else fmt
    if path.suffix.lower() == ".csv" and path.is_file():  # a missing column is one error, not one per row
        header = set(formats.rename(dict.fromkeys(formats.csv_columns(path) or []), columns))
        chosen = chosen or formats.detect_format(header)
        missing = [c for c in formats.REQUIRED.get(chosen or "", ()) if c not in header]
        if header and missing:
            problems.append(
                v.error(path, 1, f"missing column '{missing[0]}' for the {chosen} format (columns: {', '.join(sorted(header))})", formats.COLUMNS_FIX)
            )
            return []
    examples: list[Example] = []
    ids: list[tuple[str, str, int | None]] = []
    for number, raw in formats.read_rows(path, ref, split, problems):
        record = formats.rename(raw, columns)
        chosen = chosen or formats.detect_format(set(record))
        if chosen is None:
            problems.append(
                v.error(path, number, f"cannot tell the format from the fields {sorted(record)}",
                        "give " + "; ".join(f"{k}: {', '.join(v_)}" for k, v_ in formats.REQUIRED.items())
                        + ", or set data.format / map fields with data.columns")
            )
            return []
        if chosen == "qa":
            example = _qa_example(path, number, record, split, problems, max_seq_len, keys)
            new = [example] if example is not None else []
        else:
            messages, error = formats.to_conversation(chosen, record)
            fix = formats.COLUMNS_FIX
            if error is None:
                messages, error, fix = formats.check_conversation(messages, formats.for_split(split))
            if error is not None:
                problems.append(v.error(path, number, error, fix))
                continue
            _check_length(path, number, sum(len(m["content"]) for m in messages), max_seq_len, problems)
            new = conversation_examples(str(record.get("id") or f"{split}-{number}"), messages, record, split)
            if keys is not None:
                keys.extend((e.meta["key"], str(path), number) for e in new)
        ids.extend((e.id, str(path), number) for e in new)
        examples.extend(new)
    return _finish_split(path, split, examples, ids, problems, "add records with the fields of its format")


def conversation_examples(ident: str, messages: list[dict], record: dict, split: str) -> list[Example]:
    """Train: one Example whose ``input`` is every turn before the last reply (its ``reference``),
    so training sees the whole conversation. Eval: one Example per assistant turn, its input the
    turns before it; its ``key_fact`` / ``accept`` come from the turn (or, for the last one, the record)."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if split == "train":
        turns = turns[-1:]
    out = []
    for n, i in enumerate(turns, start=1):
        meta = {k: record[k] for k in ("key_fact", "accept") if i == turns[-1] and record.get(k)}
        meta.update({k: messages[i][k] for k in ("key_fact", "accept") if messages[i].get(k)})
        meta["key"] = v.normalize_text(" / ".join(m["content"] for m in plain[:i] if m["role"] == "user"))
        name = f"{ident}#{n}" if len(turns) > 1 else ident
        out.append(Example(name, plain[:i], plain[i]["content"] or None, meta))
    return out


def read_jsonl_split(path: Path, split: str) -> list[Example]:
    """The examples of a Q/A split; one DataError naming the first bad lines if any (see :func:`parse_qa_split`)."""
    problems: list[v.Problem] = []
    examples = parse_qa_split(path, split, problems)
    v.raise_errors(problems)
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


def parse_knowledge(path: Path, problems: list[v.Problem], chunk_words: int = 120) -> list[Passage]:
    """Passages of at most ``chunk_words`` words, each carrying its document's title; every
    problem of the knowledge base (a folder of documents or a JSONL file) goes to ``problems``.

    Errors: no documents, a document that is not UTF-8 or over 200 MiB, a bad JSONL line,
    duplicate passage ids, no passage at all. Warnings: an empty document or passage.
    """
    passages: list[Passage] = []
    start = len(problems)
    if path.is_dir():
        docs = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in KB_SUFFIXES)
        if not docs:
            problems.append(v.error(path, None, "no .md or .txt documents", "put the knowledge base documents in this folder"))
        for doc in docs:
            try:
                text = doc.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                problems.append(v.error(doc, None, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8"))
                continue
            if doc.stat().st_size > MAX_FILE_BYTES:
                problems.append(v.error(doc, None, "larger than 200 MiB", "split the document"))
                continue
            if not text.strip():
                problems.append(v.warning(doc, None, "empty document: adds no passages", "add its text or remove it"))
            lines = text.strip().splitlines()
            title = lines[0].lstrip("# ").strip() if lines else doc.stem
            body = "\n".join(lines[1:]) if lines and lines[0].startswith("#") else text
            name = str(doc.relative_to(path))
            passages.extend(Passage(f"{name}#{n}", name, title, chunk) for n, chunk in enumerate(_chunk_words(body, chunk_words)))
    else:
        ids: list[tuple[str, str, int | None]] = []
        for number, record in v.scan_jsonl(path, problems, what="the knowledge base"):
            if not isinstance(record.get("text"), str) or "id" not in record:
                problems.append(v.error(path, number, "expected an object with 'id' and 'text'"))
                continue
            if not record["text"].strip():
                problems.append(v.warning(path, number, "empty passage text"))
            ids.append((str(record["id"]), str(path), number))
            passages.append(Passage(record["id"], record["id"], record.get("title", ""), record["text"]))
        problems.extend(v.duplicates(ids))
    if not passages and not v.has_errors(problems[start:]):
        problems.append(v.error(path, None, "knowledge base is empty", "add documents with text"))
    return passages


def read_knowledge(path: Path, chunk_words: int = 120) -> list[Passage]:
    """The passages of a knowledge base; one DataError naming the first problems if any (see :func:`parse_knowledge`)."""
    problems: list[v.Problem] = []
    passages = parse_knowledge(path, problems, chunk_words)
    v.raise_errors(problems)
    return passages


def read_data(recipe: Recipe, *, thorough: bool = False) -> tuple[DataBundle | None, list[v.Problem]]:
    """Parse the recipe's splits and knowledge base once: the bundle (None when any problem is an
    error; no fingerprint yet, see :func:`load_data`) and every problem. Text has no
    validation-only checks, so ``thorough`` changes nothing here (it is the same signature as
    the other modalities')."""
    d = recipe.data
    problems: list[v.Problem] = []
    keys: dict[str, list[tuple[str, str, int | None]]] = {"train": [], "eval": []}
    shape = {"fmt": d.format, "columns": d.columns}
    train = (
        parse_split(recipe.path(d.train), d.train, "train", problems, max_seq_len=recipe.train.max_seq_len, keys=keys["train"], **shape)
        if d.train
        else []
    )
    evaluation = parse_split(recipe.path(d.eval), d.eval, "eval", problems, keys=keys["eval"], **shape)
    problems.extend(v.leakage(keys["train"], keys["eval"], "question"))
    if d.knowledge:
        # checked here so a broken knowledge base stops any run that names it; the retrieval
        # strategy reads it again at its own chunk size (read_knowledge)
        parse_knowledge(recipe.path(d.knowledge), problems)
    problems.extend(check_template(recipe))
    if v.has_errors(problems):
        return None, problems
    return DataBundle(train, evaluation, {}), problems


def data_paths(recipe: Recipe) -> list[Path]:
    """Every data file or folder the recipe names (what the fingerprint covers)."""
    d = recipe.data
    paths = [Path(recipe.path(p)) for p in (d.train, d.eval, d.knowledge) if p]
    return [p for p in paths if p.exists()]  # a hub id has no file here


def load_data(recipe: Recipe) -> DataBundle:
    """The recipe's data, or one DataError for the first errors (warnings do not stop a run)."""
    return v.bundle_or_raise(*read_data(recipe), data_paths(recipe))


def validate_data(recipe: Recipe) -> list[v.Problem]:
    """Every problem of the splits and the knowledge base, each with file and line."""
    return read_data(recipe, thorough=True)[1]
