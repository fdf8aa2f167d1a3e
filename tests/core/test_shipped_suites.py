"""The suites shipped in eval/ parse, cover all three modalities, and their held-out data is what
eval/README.md says it is (no model is loaded: these checks read files only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmadapt.evalspec import load_suite

ROOT = Path(__file__).resolve().parents[2]
SUITES = sorted((ROOT / "eval").glob("*.yaml"))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_shipped_suite_parses_has_bars_and_is_described(path):
    suite = load_suite(path)
    assert suite.bars and all(s.exists() for s in suite.sets)
    assert f"`{path.name}`" in (ROOT / "eval" / "README.md").read_text(encoding="utf-8")


def test_the_shipped_suites_cover_every_modality_and_wer_is_a_maximum():
    suites = {load_suite(p).name: load_suite(p) for p in SUITES}
    assert {s.modality for s in suites.values()} == {"text", "image", "speech"}
    assert len(suites) >= 4
    assert suites["speech-plain-english"].check({"wer": 0.5, "cer": 0.01}) == ["wer 0.50 > 0.20"]


def test_unseen_facts_are_in_the_knowledge_base_and_not_in_the_train_split():
    train = (ROOT / "datasets" / "zentrix-support" / "train.jsonl").read_text(encoding="utf-8").lower()
    rows = _jsonl(ROOT / "eval" / "zentrix-unseen-facts.jsonl")
    assert len(rows) >= 20 and len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert set(row) >= {"question", "answer", "key_fact"}
        assert row["key_fact"] in (ROOT / "datasets" / "zentrix-support" / "kb" / row["doc"]).read_text(encoding="utf-8")
        assert row["key_fact"].lower() not in train, row
        assert row["key_fact"].lower() in row["answer"].lower()


def test_brand_prompts_are_new_to_the_recipe():
    shipped = {r["prompt"] for r in _jsonl(ROOT / "datasets" / "brand-style" / "prompts.jsonl")}
    captions = " ".join(r["caption"] for r in _jsonl(ROOT / "datasets" / "brand-style" / "captions.jsonl"))
    prompts = [r["prompt"] for r in _jsonl(ROOT / "eval" / "brand-prompts.jsonl")]
    assert len(prompts) == len(set(prompts)) >= 20
    assert not [p for p in prompts if p in shipped or p in captions]
