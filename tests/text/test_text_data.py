"""Text data: Q/A splits with every bad line reported at once, knowledge chunking, fingerprints."""

from __future__ import annotations

import json

import pytest

from mmadapt.engine.validate import fingerprint
from mmadapt.errors import DataError
from mmadapt.modalities.text.data import _chunk_words, read_jsonl_split, read_knowledge


def test_reads_examples_with_ids_and_meta(text_data):
    examples = read_jsonl_split(text_data["train"], "train")
    assert [e.id for e in examples] == ["t1", "t2", "t3"]
    assert examples[1].input == "How much does the Pro plan cost?" and examples[1].reference == "It costs $149/month."
    assert examples[1].meta == {"key_fact": "$149"}


def test_missing_ids_are_numbered_by_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"question": "a?", "answer": "x"}\n\n{"question": " b? "}\n')
    examples = read_jsonl_split(path, "eval")
    assert [(e.id, e.input, e.reference) for e in examples] == [("eval-1", "a?", "x"), ("eval-3", "b?", None)]


def test_every_bad_line_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"id": "1", "question": "ok?", "answer": "ok"}',
                "{not json",
                '["a list"]',
                '{"id": "4", "answer": "no question"}',
                '{"id": "1", "question": "dup?", "answer": "x"}',
                '{"id": "6", "question": "q?", "answer": 5}',
                '{"id": "7", "question": "   ", "answer": "x"}',
            ]
        )
    )
    with pytest.raises(DataError) as err:
        read_jsonl_split(path, "train")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    for fragment in (
        "line 2: invalid JSON",
        "line 3: expected a JSON object, got list",
        "line 4: 'question' must be a non-empty string",
        "line 5: duplicate id '1'",
        "line 6: 'answer' must be a string",
        "line 7: 'question' must be a non-empty string",
    ):
        assert fragment in message
    assert "line 1:" not in message


def test_more_than_ten_problems_are_counted(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{x\n" * 13)
    # 13 bad lines and "holds no usable examples": 10 shown
    with pytest.raises(DataError, match="the train split holds no usable examples; line 1: invalid JSON.*and 4 more"):
        read_jsonl_split(path, "train")


@pytest.mark.parametrize(
    ("content", "message"),
    [("", r"is empty \(0 bytes\)"), ("\n  \n", r"holds no records \(only blank lines\)"), (b"\xff\xfe", "not UTF-8")],
)
def test_empty_or_binary_file(tmp_path, content, message):
    path = tmp_path / "s.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        read_jsonl_split(path, "train")


def test_a_folder_is_not_a_split(tmp_path):
    with pytest.raises(DataError, match="not a file"):
        read_jsonl_split(tmp_path, "train")


def test_chunk_words():
    assert _chunk_words("a b c\n\nd e\n\nf g h i j", 4) == ["a b c", "d e", "f g h i", "j"]
    assert _chunk_words("a b\n\nc d\n\ne", 4) == ["a b c d", "e"]  # short paragraphs share a chunk
    text = "\n\n".join(" ".join(f"p{p}w{w}" for w in range(n)) for p, n in enumerate([3, 9, 1, 4, 12, 2]))
    chunks = _chunk_words(text, 5)
    assert all(len(c.split()) <= 5 for c in chunks)
    assert " ".join(chunks).split() == text.split()  # every word once, in order
    assert _chunk_words("one two three", 100) == ["one two three"]
    assert _chunk_words("", 5) == []


def test_read_knowledge_folder_titles_and_chunks(tmp_path):
    kb = tmp_path / "kb"
    (kb / "sub").mkdir(parents=True)
    (kb / "a.md").write_text("# Network ports\n\n" + " ".join(f"w{i}" for i in range(25)) + "\n")
    (kb / "sub" / "b.txt").write_text("no heading here\n\nsecond paragraph")
    (kb / "ignored.json").write_text("{}")
    passages = read_knowledge(kb, chunk_words=10)
    assert [p.id for p in passages] == ["a.md#0", "a.md#1", "a.md#2", "sub/b.txt#0"]
    assert passages[0].title == "Network ports" and passages[0].text == " ".join(f"w{i}" for i in range(10))
    assert passages[2].text == "w20 w21 w22 w23 w24"
    assert passages[3].title == "no heading here" and passages[3].text == "no heading here second paragraph"


def test_read_knowledge_jsonl_and_errors(tmp_path):
    path = tmp_path / "kb.jsonl"
    path.write_text(json.dumps({"id": "p1", "title": "T", "text": "hello"}) + "\n")
    assert [(p.id, p.title, p.text) for p in read_knowledge(path)] == [("p1", "T", "hello")]
    path.write_text('{"id": "p1"}\n')
    with pytest.raises(DataError, match="line 1: expected an object with 'id' and 'text'"):
        read_knowledge(path)
    with pytest.raises(DataError, match="knowledge base not found"):
        read_knowledge(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .md or .txt documents"):
        read_knowledge(tmp_path / "empty")


def test_fingerprint_follows_content(text_data):
    paths = [text_data["train"], text_data["knowledge"]]
    digest, files = fingerprint(paths)
    assert files == ["train.jsonl", "kb/ports.md", "kb/pricing.md"]
    assert fingerprint(paths)[0] == digest
    (text_data["knowledge"] / "ports.md").write_text("# Network ports\n\nport 7444\n")
    assert fingerprint(paths)[0] != digest
