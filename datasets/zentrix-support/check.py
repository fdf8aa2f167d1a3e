#!/usr/bin/env python3
"""Check the Zentrix support dataset against its rules (Python 3.11 standard library only).

Run: python3 datasets/zentrix-support/check.py
Prints every problem found and exits 1, or prints a summary and exits 0.

Rules checked:
* kb/: about 20 docs named NN-slug.md, each starting with "# Title", 80-200 words.
* train.jsonl has 60 rows, eval.jsonl 62; ids train-001.. / eval-001.. in order, unique.
* every row is one JSON object with exactly id, question, answer, key_fact, doc (non-empty strings);
  eval rows also have slice: "seen" (40 paraphrases of train facts) or "unseen" (at least 20).
* the answer is one short sentence (<= 20 words) containing key_fact verbatim.
* key_fact is 1-4 tokens, appears verbatim (case-insensitive) in its doc, and as a token run
  in no other doc; it is not in the question (neither as a substring nor as a token run).
* a key_fact names one fact: always the same doc, and no key_fact's tokens contain another's.
* every seen eval key_fact is also a train key_fact; they cover 30-40 distinct facts and train
  asks more facts than they do.
* no unseen key_fact is a train key_fact or appears (case-insensitive) anywhere in train.jsonl.
* no eval question is a near-copy of a train question: token Jaccard < 0.6.
* no duplicate questions; all files plain ASCII, valid UTF-8, ending in a newline.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KB = HERE / "kb"
FIELDS = ("id", "question", "answer", "key_fact", "doc")
COUNTS = {"train": 60, "eval": 62}
SLICES = {"seen": 40, "unseen": 22}
DOC_NAME = re.compile(r"^\d\d-[a-z0-9]+(-[a-z0-9]+)*\.md$")
TOKEN = re.compile(r"[a-z]+|[0-9]+")  # the tokens of mmadapt's fact_accuracy
JACCARD_MAX = 0.6
MAX_ANSWER_WORDS = 20
DOC_WORDS = (80, 200)
DOC_COUNT = (15, 25)
EVAL_FACTS = (30, 40)


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def has_run(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def jaccard(a: str, b: str) -> float:
    x, y = set(tokens(a)), set(tokens(b))
    return len(x & y) / len(x | y) if x | y else 1.0


def read_text(path: Path, problems: list[str]) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(f"{path.name}: cannot read ({exc})")
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{path.name}: not valid UTF-8")
        return None
    if not text.isascii():
        bad = sorted({c for c in text if not c.isascii()})
        problems.append(f"{path.name}: non-ASCII characters {bad!r}")
    if not text.endswith("\n"):
        problems.append(f"{path.name}: no trailing newline")
    if "\r" in text:
        problems.append(f"{path.name}: carriage returns")
    return text


def check_kb(problems: list[str]) -> dict[str, str]:
    docs: dict[str, str] = {}
    if not KB.is_dir():
        problems.append("kb/: missing")
        return docs
    for path in sorted(KB.iterdir()):
        if not DOC_NAME.match(path.name):
            problems.append(f"kb/{path.name}: name is not NN-slug.md")
            continue
        text = read_text(path, problems)
        if text is None:
            continue
        docs[path.name] = text
        first = text.split("\n", 1)[0]
        if not re.match(r"^# \S", first):
            problems.append(f"kb/{path.name}: first line is not '# Title'")
        words = len(text.split())
        if not DOC_WORDS[0] <= words <= DOC_WORDS[1]:
            problems.append(f"kb/{path.name}: {words} words, want {DOC_WORDS[0]}-{DOC_WORDS[1]}")
    numbers = [name[:2] for name in docs]
    if len(set(numbers)) != len(numbers):
        problems.append("kb/: two docs share a number")
    if not DOC_COUNT[0] <= len(docs) <= DOC_COUNT[1]:
        problems.append(f"kb/: {len(docs)} docs, want {DOC_COUNT[0]}-{DOC_COUNT[1]}")
    return docs


def read_split(split: str, problems: list[str]) -> list[dict]:
    path = HERE / f"{split}.jsonl"
    text = read_text(path, problems)
    if text is None:
        return []
    rows = []
    for n, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), start=1):
        where = f"{split}.jsonl:{n}"
        if not line.strip():
            problems.append(f"{where}: blank line")
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON ({exc})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: not a JSON object")
            continue
        fields = (*FIELDS, "slice") if split == "eval" else FIELDS
        if set(row) != set(fields):
            problems.append(f"{where}: fields {sorted(row)}, want {list(fields)}")
            continue
        if not all(isinstance(row[f], str) and row[f].strip() for f in fields):
            problems.append(f"{where}: every field must be a non-empty string")
            continue
        row["_where"] = f"{split}.jsonl:{n} ({row['id']})"
        rows.append(row)
    if len(rows) != COUNTS[split]:
        problems.append(f"{split}.jsonl: {len(rows)} valid rows, want {COUNTS[split]}")
    for n, row in enumerate(rows, start=1):
        want = f"{split}-{n:03d}"
        if row["id"] != want:
            problems.append(f"{row['_where']}: id {row['id']!r}, want {want!r}")
    return rows


def check_row(row: dict, docs: dict[str, str], problems: list[str]) -> None:
    where, question, answer, fact, doc = row["_where"], row["question"], row["answer"], row["key_fact"], row["doc"]
    fact_tokens = tokens(fact)
    if not 1 <= len(fact_tokens) <= 4:
        problems.append(f"{where}: key_fact {fact!r} has {len(fact_tokens)} tokens, want 1-4")
    if re.fullmatch(r"\d", fact.strip()) or fact.strip().lower() in {"yes", "no", "true", "false"}:
        problems.append(f"{where}: key_fact {fact!r} is trivially guessable")
    if fact not in answer:
        problems.append(f"{where}: key_fact {fact!r} not verbatim in answer {answer!r}")
    words = len(answer.split())
    if words > MAX_ANSWER_WORDS:
        problems.append(f"{where}: answer has {words} words, want <= {MAX_ANSWER_WORDS}")
    if not answer.endswith(".") or re.search(r"[.!?]\s+[A-Z]", answer[:-1]):
        problems.append(f"{where}: answer is not one sentence ending in '.'")
    if not question.endswith("?"):
        problems.append(f"{where}: question does not end in '?'")
    if fact.lower() in question.lower() or has_run(tokens(question), fact_tokens):
        problems.append(f"{where}: key_fact {fact!r} is given away by the question")
    if doc not in docs:
        problems.append(f"{where}: doc {doc!r} not in kb/")
        return
    if fact.lower() not in docs[doc].lower():
        problems.append(f"{where}: key_fact {fact!r} not verbatim in kb/{doc}")
    others = [name for name, text in docs.items() if name != doc and has_run(tokens(text), fact_tokens)]
    if others:
        problems.append(f"{where}: key_fact {fact!r} also appears in {', '.join(others)}")


def main() -> int:
    problems: list[str] = []
    docs = check_kb(problems)
    readme = HERE / "README.md"
    if readme.is_file():
        read_text(readme, problems)
    else:
        problems.append("README.md: missing")
    train, all_evals = read_split("train", problems), read_split("eval", problems)
    rows = train + all_evals
    evals = [r for r in all_evals if r["slice"] == "seen"]
    unseen = [r for r in all_evals if r["slice"] == "unseen"]
    for name, want in SLICES.items():
        got = sum(r["slice"] == name for r in all_evals)
        if got != want:
            problems.append(f"eval.jsonl: {got} rows of slice {name!r}, want {want}")
    for row in all_evals:
        if row["slice"] not in SLICES:
            problems.append(f"{row['_where']}: slice {row['slice']!r}, want one of {list(SLICES)}")

    ids = [r["id"] for r in rows]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"id {dup!r} used more than once")
    questions = [" ".join(tokens(r["question"])) for r in rows]
    for r, q in zip(rows, questions):
        if questions.count(q) > 1:
            problems.append(f"{r['_where']}: duplicate question {r['question']!r}")

    for row in rows:
        check_row(row, docs, problems)

    fact_doc: dict[str, str] = {}
    fact_answers: dict[str, set[str]] = {}
    for row in rows:
        fact = row["key_fact"]
        if fact_doc.setdefault(fact, row["doc"]) != row["doc"]:
            problems.append(f"{row['_where']}: key_fact {fact!r} points at {row['doc']} and {fact_doc[fact]}")
        fact_answers.setdefault(fact, set()).add(row["answer"])
    for fact, answers in fact_answers.items():
        if len(answers) > 1:
            problems.append(f"key_fact {fact!r} has {len(answers)} different answers")
    facts = sorted(fact_doc)
    for a in facts:
        for b in facts:
            if a != b and has_run(tokens(b), tokens(a)):
                problems.append(f"key_fact {a!r} is contained in key_fact {b!r}: facts must be distinct")
    lowered: dict[str, str] = {}
    for fact in facts:
        if lowered.setdefault(fact.lower(), fact) != fact:
            problems.append(f"key_facts {fact!r} and {lowered[fact.lower()]!r} differ only in case")

    train_facts = {r["key_fact"] for r in train}
    eval_facts = {r["key_fact"] for r in evals}
    for row in evals:
        if row["key_fact"] not in train_facts:
            problems.append(f"{row['_where']}: key_fact {row['key_fact']!r} is never asked in train")
    if not EVAL_FACTS[0] <= len(eval_facts) <= EVAL_FACTS[1]:
        problems.append(f"eval covers {len(eval_facts)} facts, want {EVAL_FACTS[0]}-{EVAL_FACTS[1]}")
    if not train_facts > eval_facts:
        problems.append("train must ask every eval fact plus some facts of its own")
    train_text = (HERE / "train.jsonl").read_text(encoding="utf-8").lower()
    for row in unseen:
        if row["key_fact"] in train_facts or row["key_fact"].lower() in train_text:
            problems.append(f"{row['_where']}: unseen key_fact {row['key_fact']!r} is stated in train.jsonl")

    worst = (0.0, "", "")
    for e in evals:  # paraphrases of train facts: none may be a near-copy (unseen facts are other facts)
        for t in train:
            score = jaccard(e["question"], t["question"])
            if score >= JACCARD_MAX:
                problems.append(f"{e['_where']}: near-copy of {t['_where']} (Jaccard {score:.2f}): "
                                f"{e['question']!r} ~ {t['question']!r}")
            if score > worst[0]:
                worst = (score, e["id"], t["id"])

    if problems:
        print(f"FAILED: {len(problems)} problem(s)")
        for p in problems:
            print(f"- {p}")
        return 1
    print(f"OK: {len(docs)} kb docs, {len(train)} train / {len(all_evals)} eval questions ({len(unseen)} unseen), "
          f"{len(train_facts)} facts in train ({len(train_facts - eval_facts)} train-only), "
          f"{len(eval_facts)} in eval; highest eval/train Jaccard {worst[0]:.2f} ({worst[1]} ~ {worst[2]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
