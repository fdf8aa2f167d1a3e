"""Shared fixtures: a tiny causal LM (built once per session), a tiny text dataset, a recipe writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]

TRAIN = [
    {"id": "t1", "question": "What port does the gateway listen on?", "answer": "Port 7443.", "key_fact": "7443"},
    {"id": "t2", "question": "How much does the Pro plan cost?", "answer": "It costs $149/month.", "key_fact": "$149"},
    {"id": "t3", "question": "Who makes Zentrix?", "answer": "Zentrix Labs.", "key_fact": "Zentrix Labs"},
]
EVAL = [
    {"id": "e1", "question": "Which port is the gateway on?", "answer": "7443", "key_fact": "7443"},
    {"id": "e2", "question": "What is the price of Pro?", "answer": "$149 a month", "key_fact": "$149"},
]
KB = {
    "ports.md": "# Network ports\n\nThe Zentrix gateway listens on port 7443 for TLS traffic.\n",
    "pricing.md": "# Pricing\n\nThe Pro plan costs $149 per month, billed yearly.\n",
}


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A tiny random causal LM folder (safetensors + tokenizer with a chat template), built once."""
    import torch

    from tests.fixtures.tiny import tiny_causal_lm

    torch.set_num_threads(1)
    return tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def text_data(tmp_path) -> dict[str, Path]:
    """train.jsonl, eval.jsonl and a 2-document kb/ folder under tmp_path/data."""
    root = tmp_path / "data"
    (root / "kb").mkdir(parents=True)
    write_jsonl(root / "train.jsonl", TRAIN)
    write_jsonl(root / "eval.jsonl", EVAL)
    for name, text in KB.items():
        (root / "kb" / name).write_text(text, encoding="utf-8")
    return {"root": root, "train": root / "train.jsonl", "eval": root / "eval.jsonl", "knowledge": root / "kb"}


@pytest.fixture
def make_recipe(text_data):
    """make_recipe(base_model=..., **top_level_keys) -> a valid raw text recipe over ``text_data`` (absolute paths)."""

    def make(base_model: str = "embedded:smollm2-135m-instruct", **extra) -> dict:
        return _recipe(text_data, base_model, **extra)

    return make


def _recipe(text_data, base_model: str, **extra) -> dict:
    recipe = {
        "name": "tiny-text",
        "modality": "text",
        "base_model": str(base_model),
        "data": {k: str(text_data[k]) for k in ("train", "eval", "knowledge")},
        "strategies": {"prompt": {"system": "Answer briefly."}, "retrieval": {"top_k": 1}},
    }
    recipe.update(extra)
    return recipe


@pytest.fixture
def write_recipe(tmp_path):
    """write_recipe(data_or_text, name='recipe.yaml', folder=tmp_path) -> Path of the YAML written."""

    def write(content, name: str = "recipe.yaml", folder: Path | None = None) -> Path:
        path = (folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def snapshot():
    """snapshot(folder) -> every path under it (to assert that nothing was written)."""

    def take(folder: Path) -> set[str]:
        return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}

    return take
