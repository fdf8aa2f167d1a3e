import json

import pytest

from tests.fixtures.tiny import tiny_causal_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A tiny random causal LM folder (built in-process, no download)."""
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def qa_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    rows = [{"question": f"What is code {i}?", "answer": f"Code {i} means ZX-{1000 + i}.", "key_fact": f"ZX-{1000 + i}"} for i in range(16)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:4]) + "\n")
    return folder
