"""Text data formats: where records come from (tables) and what shape they have (formats).

Tables: JSONL, JSON (a list of objects, or an object with one such list), CSV, Parquet, a folder
written by ``datasets``' ``save_to_disk``, or a hub dataset id ``owner/name[:split]`` where a hub is
reachable. Each yields ``(line or row number, record)``; every unreadable line is a problem.

Formats (``data.format``, or detected from the first record): ``qa`` ({question, answer,
key_fact?}: parsed by data.py as before), ``messages`` (OpenAI: {messages: [{role, content}]}),
``sharegpt`` ({conversations: [{from, value}], system?}) and ``alpaca`` ({instruction, input?,
output, system?, history?: [[user, assistant], ...]}). ``data.columns`` maps our field names to
the file's. Each conversation format becomes one list of ``{"role", "content"}`` messages (an
optional system turn first, then user and assistant turns), checked by :func:`check_conversation`,
the one parser of ``messages`` lists: serve's chat requests go through it too (:data:`REQUEST`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmadapt.engine import validate as v

FORMATS = ("qa", "messages", "sharegpt", "alpaca")
DETECT = (("messages", "messages"), ("conversations", "sharegpt"), ("instruction", "alpaca"), ("question", "qa"))
REQUIRED = {"qa": ("question", "answer"), "messages": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output")}
LIST_FIELDS = ("messages", "conversations", "history", "accept")  # CSV cells holding JSON
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
COLUMNS_FIX = "name it in data.columns, e.g. columns: {question: prompt}"

Rows = Iterator[tuple[int, dict[str, Any]]]


# ---------------------------------------------------------------- tables


def read_rows(path: Path, ref: str, split: str, problems: list[v.Problem]) -> Rows:
    """(line or row number, record) of a split in any table form; problems go to ``problems``."""
    what = f"the {split} split"
    if path.is_dir():
        yield from _dataset_rows(path, split, problems)
    elif not path.exists() and not Path(ref).is_absolute() and ref.count("/") == 1:
        yield from _hub_rows(ref, split, problems)
    elif path.suffix.lower() == ".csv":
        yield from _csv_rows(path, what, problems)
    elif path.suffix.lower() == ".json":
        yield from _json_rows(path, what, problems)
    elif path.suffix.lower() == ".parquet":
        yield from _parquet_rows(path, what, problems)
    else:
        yield from v.scan_jsonl(path, problems, what=what)


def _csv_rows(path: Path, what: str, problems: list[v.Problem]) -> Rows:
    text = v.read_checked_text(path, problems, what, encoding="utf-8-sig")
    if text is None:
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for record in reader:
            number = reader.line_num  # the line the row ends on (the header is line 1)
            if None in record:
                problems.append(v.error(path, number, "more cells than the header has columns", "quote cells holding commas"))
                continue
            for key in LIST_FIELDS:  # lists are JSON text in a CSV cell
                cell = record.get(key)
                if isinstance(cell, str) and cell.strip():
                    try:
                        record[key] = json.loads(cell)
                    except ValueError as exc:
                        problems.append(v.error(path, number, f"column '{key}' is not JSON ({exc})", "write the list as JSON"))
                        record = {}
                        break
            if record:
                yield number, {k: val for k, val in record.items() if val != ""}
    except csv.Error as exc:
        problems.append(v.error(path, reader.line_num, f"bad CSV ({exc})", "save it as comma-separated UTF-8 with a header"))


def csv_columns(path: Path) -> list[str] | None:
    """The header of a CSV file (None if unreadable): a missing column is one error, not one per row."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _json_rows(path: Path, what: str, problems: list[v.Problem]) -> Rows:
    text = v.read_checked_text(path, problems, what)
    if text is None:
        return
    try:
        data = json.loads(text)
    except ValueError as exc:
        problems.append(v.error(path, getattr(exc, "lineno", None), f"invalid JSON ({getattr(exc, 'msg', exc)})", "one JSON array of objects"))
        return
    if isinstance(data, dict):
        lists = [val for val in data.values() if isinstance(val, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list):
        problems.append(v.error(path, None, "expected a JSON array of objects", "write [ {...}, {...} ] or use JSONL"))
        return
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            problems.append(v.error(path, number, f"record {number} is a {type(record).__name__}, not an object"))
            continue
        yield number, record  # the record's position in the array (1-based)


def _parquet_rows(path: Path, what: str, problems: list[v.Problem]) -> Rows:
    import pyarrow.parquet as pq

    bad = v.check_file(path, what, max_bytes=4 * v.MAX_JSONL_BYTES)
    if bad is not None:
        problems.append(bad)
        return
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds (ArrowInvalid, OSError ...)
        problems.append(v.error(path, None, f"not a readable Parquet file ({exc})", "write it with pandas.to_parquet or pyarrow"))
        return
    yield from enumerate(rows, start=1)  # row numbers, 1-based


def _dataset_rows(path: Path, split: str, problems: list[v.Problem]) -> Rows:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        problems.append(v.error(path, None, f"not a datasets save_to_disk folder ({exc})", "save it with Dataset.save_to_disk"))
        return
    if isinstance(data, DatasetDict):
        names = [n for n in (split, "validation", "test") if n in data] if split == "eval" else [n for n in (split,) if n in data]
        if not names:
            problems.append(v.error(path, None, f"no '{split}' split (it has {', '.join(data)})", f"point at {path}/<split>"))
            return
        data = data[names[0]]
    assert isinstance(data, Dataset)
    yield from enumerate(data.to_list(), start=1)


def _hub_rows(ref: str, split: str, problems: list[v.Problem]) -> Rows:
    name, _, hub_split = ref.partition(":")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        problems.append(
            v.error(ref, None, "not a file, and the hub is offline (HF_HUB_OFFLINE)", "save it with save_to_disk where a hub answers; point at the folder")
        )
        return
    from datasets import load_dataset

    try:
        data = load_dataset(name, split=hub_split or ("train" if split == "train" else "test"))
    except Exception as exc:  # noqa: BLE001 - the hub client raises many kinds; one line says which
        problems.append(v.error(ref, None, f"cannot load the hub dataset ({type(exc).__name__}: {exc})"[:300], "check the id and split"))
        return
    yield from enumerate(data.to_list(), start=1)


# ---------------------------------------------------------------- formats


def detect_format(keys: set[str]) -> str | None:
    return next((fmt for key, fmt in DETECT if key in keys), None)


def rename(record: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The record under our field names (``columns``: ours -> theirs), at the top and in each message."""
    if not columns:
        return record
    back = {theirs: ours for ours, theirs in columns.items()}
    out = {back.get(k, k): val for k, val in record.items()}
    for key in ("messages", "conversations"):
        if isinstance(out.get(key), list):
            out[key] = [{back.get(k, k): val for k, val in m.items()} if isinstance(m, dict) else m for m in out[key]]
    return out


def to_conversation(fmt: str, record: dict[str, Any]) -> tuple[list[Any], str | None]:
    """(messages as given, role-mapped; an error message or None) for one record of a conversation format."""
    if fmt == "messages":
        messages = record.get("messages")
        if not isinstance(messages, list):
            return [], "'messages' must be a list of {role, content}"
        return messages, None
    if fmt == "sharegpt":
        turns = record.get("conversations")
        if not isinstance(turns, list):
            return [], "'conversations' must be a list of {from, value}"
        out: list[Any] = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        for turn in turns:
            if not isinstance(turn, dict):
                return [], "every turn must be an object {from, value}"
            role = turn.get("from")
            out.append({**turn, "role": SHAREGPT_ROLES.get(role, role), "content": turn.get("value")})
        return out, None
    # alpaca
    instruction, output = record.get("instruction"), record.get("output")
    if not isinstance(instruction, str) or not isinstance(output, str):
        return [], "'instruction' and 'output' must be strings"
    out = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    history = record.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list | tuple) and len(h) == 2 for h in history):
        return [], "'history' must be a list of [user, assistant] pairs"
    for user, assistant in history:
        out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    extra = record.get("input")
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    out += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return out, None


@dataclass(frozen=True)
class Conversation:
    """How :func:`check_conversation` reads a ``messages`` list: what its items are called in an error
    (a data file's turns, a request's messages), which roles it accepts (and what they become),
    whether a system turn may only come first or several are joined into one first turn, which turn
    it must hold (data: an assistant turn to learn or score, after a user turn; a request: it ends
    with the user turn to answer), whether an assistant turn may be empty (an eval reference), and
    which per-turn fields it keeps (``key_fact``, ``accept`` in data)."""

    noun: str
    roles: dict[str, str]
    role_fix: str
    join_system: bool = False
    ends_with_user: bool = False
    empty_reply: bool = False
    keep: tuple[str, ...] = ()


DATA = Conversation("turn", {r: r for r in ROLES}, f"use one of {', '.join(ROLES)} (or map it with data.columns)",
                    keep=("key_fact", "accept"))
REQUEST = Conversation("message", {**{r: r for r in ROLES}, "developer": "system"},
                       "send system, developer, user and assistant messages (tools are not served)",
                       join_system=True, ends_with_user=True)


def content_text(content: Any) -> Any:
    """A turn's text: a string, or OpenAI's content parts (the ``{"type": "text"}`` parts joined)."""
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
    return content


def check_conversation(messages: Any, rules: Conversation = DATA) -> tuple[list[dict[str, Any]], str | None, str | None]:
    """(clean messages, error, fix): THE parser of a ``messages`` list, for data files (``rules``
    :data:`DATA`, the eval split with ``empty_reply``) and serve's requests (:data:`REQUEST`). Every
    turn an object with a known role and text content (stripped; an empty system turn is dropped
    where system turns are joined); one system turn first (or several joined into one first turn);
    then the turns ``rules`` asks for."""
    noun = rules.noun
    if not isinstance(messages, list) or not messages:
        return [], "`messages` must be a non-empty list of {role, content}", f"send at least one user {noun}"
    system: list[str] = []
    clean: list[dict[str, Any]] = []
    for i, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            return [], f"{noun} {i} is not an object", f"write each {noun} as {{role, content}}"
        given = message.get("role")
        if given is None:
            return [], f"{noun} {i} has no role", f"write each {noun} as {{role, content}}"
        role = rules.roles.get(given) if isinstance(given, str) else None
        if role is None:
            return [], f"{noun} {i}: unknown role {given!r}", rules.role_fix
        content = content_text(message.get("content"))
        if role == "system" and not rules.join_system and i != 1:
            return [], f"{noun} {i}: a system turn after the first", "put the system turn first"
        blank_ok = (role == "assistant" and rules.empty_reply) or (role == "system" and rules.join_system)
        if not isinstance(content, str) or (not content.strip() and not blank_ok):
            return [], f"{noun} {i} ({role}): content must be a non-empty string", f"add the text of the {noun}"
        if role == "system" and rules.join_system:
            system += [content.strip()] if content.strip() else []
            continue
        clean.append({**{k: message[k] for k in rules.keep if k in message}, "role": role, "content": content.strip()})
    if system:
        clean.insert(0, {"role": "system", "content": "\n\n".join(system)})
    roles = [m["role"] for m in clean]
    if rules.ends_with_user:
        if "user" not in roles:
            return [], f"no {noun} with role `user`", f"send the question as a user {noun}"
        if roles[-1] != "user":
            return [], f"the last {noun} must be the user turn to answer", "end `messages` with the question"
        return clean, None, None
    if "assistant" not in roles:
        return [], "a conversation with no assistant turn: nothing to learn or score", "add the assistant's reply or drop the line"
    if "user" not in roles[: roles.index("assistant")]:
        return [], "the first assistant turn has no user turn before it", "start the conversation with a user turn"
    return clean, None, None


def for_split(split: str) -> Conversation:
    """The data rules of a split: an eval conversation may leave a reply empty (nothing to score)."""
    return replace(DATA, empty_reply=split == "eval")
