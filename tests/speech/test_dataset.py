"""The shipped speech-domain dataset is what its README promises."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import soundfile as sf

from mmadapt.modalities.speech.metrics import normalize_with_spans

ROOT = Path(__file__).resolve().parents[2] / "datasets" / "speech-domain"


def _load_script():
    spec = importlib.util.spec_from_file_location("speech_domain_make", ROOT / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (ROOT / split / "metadata.jsonl").read_text().splitlines() if line.strip()]


VOCAB = [t for t in (ROOT / "vocabulary.txt").read_text().splitlines() if t.strip()]


def test_vocabulary_files():
    assert len(VOCAB) == len(set(VOCAB)) == 40
    big = [t for t in (ROOT / "vocabulary-300.txt").read_text().splitlines() if t.strip()]
    assert len(big) == 300 and len({t.lower() for t in big}) == 300
    assert big[:40] == VOCAB


def test_distractors_are_deterministic_and_distinct():
    script = _load_script()
    real = [t for t, _, _ in script.TERMS]
    a, b = script.distractors(real, 260), script.distractors(real, 260)
    assert a == b and not {t.lower() for t in a} & {t.lower() for t in real}


@pytest.mark.parametrize("split,count", [("train", 120), ("eval", 40), ("plain", 20)])
def test_split_metadata_and_audio(split, count):
    rows = _rows(split)
    assert len(rows) == count
    assert len({r["transcription"] for r in rows}) == count  # no repeated sentence inside a split
    for r in rows:
        assert set(r) >= {"file_name", "transcription", "terms"}
        info = sf.info(ROOT / split / r["file_name"])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.5 < info.duration < 10.0
        for term in r["terms"]:
            assert term in VOCAB and term in r["transcription"]
        # the terms listed are exactly the vocabulary terms the metrics find in the transcription
        _, owners = normalize_with_spans(r["transcription"], VOCAB)
        found = {o for o in owners if o}
        assert found == {t.lower() for t in r["terms"]}
    if split == "plain":
        assert all(r["terms"] == [] for r in rows)


def test_train_and_eval_differ():
    train, evals = _rows("train"), _rows("eval")
    assert not {r["transcription"] for r in train} & {r["transcription"] for r in evals}
    assert not {r["voice"] for r in train} & {r["voice"] for r in evals}
    assert {r["noise"] for r in train} != {r["noise"] for r in evals}
    train_terms = {t for r in train for t in r["terms"]}
    eval_terms = {t for r in evals for t in r["terms"]}
    assert eval_terms == set(VOCAB)  # every term is spoken in eval
    eval_only = eval_terms - train_terms
    assert len(eval_only) == 8 and eval_only == _load_script().EVAL_ONLY
    # eval-only terms appear in no train sentence at all, in any spelling
    for term in eval_only:
        pattern = re.compile(re.escape(term), re.IGNORECASE)
        assert not any(pattern.search(r["transcription"]) for r in train)


def test_shipped_size_is_small():
    total = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert total < 15_000_000
