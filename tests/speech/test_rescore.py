"""The rescoring pass (rescore.py): near-miss spans, teacher-forced scores, and the decision being the
model's score comparison, on a tiny random Whisper built in-process."""

from __future__ import annotations

import json

import pytest
import torch

import mmadapt
from mmadapt.modalities.speech.boost import BoostConfig
from mmadapt.modalities.speech.predict import special_ids
from mmadapt.modalities.speech.rescore import candidates, rescore, sequence_scores

TEXT = "Compare QVlyn with fella tron, on the rack."
TERMS = ["Kubelyn", "Pellatron", "rack"]


@pytest.fixture
def tiny(tiny_whisper_dir):
    """(model, tokenizer, encoder states of two random 'clips', decoder prefix)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir).eval()
    tok = WhisperProcessor.from_pretrained(tiny_whisper_dir).tokenizer
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        states = model.get_encoder()(feats).last_hidden_state
    ids = special_ids(tok)
    return model, tok, states, [ids["sot"], ids["notimestamps"]]


def test_candidates_merge_words_keep_punctuation_and_leave_written_terms():
    found = candidates(TEXT, TERMS, 0.6, 3, 32)
    texts = {c.text for c in found}
    assert "Compare QVlyn with Pellatron, on the rack." in texts, "two words merged into one term, the comma kept"
    assert "Compare Kubelyn with fella tron, on the rack." in texts, "the first letters heard wrong"
    assert all(c.end <= 6 for c in found), "'rack' is already written: no span over it"
    assert found == sorted(found, key=lambda c: (c.distance, c.start, c.term))
    assert not candidates(TEXT, TERMS, 0.2, 1, 32), "one word alone is too far from 'Pellatron'"
    assert candidates("Fella tron", ["pellatron"], 0.2, 2, 32)[0].text == "Pellatron", (
        "a transcript's first word stays capitalised"
    )
    assert len(candidates(TEXT, TERMS, 1.0, 3, 5)) == 5


def test_batched_scores_equal_scores_alone(tiny):
    model, tok, states, prefix = tiny
    rows = [tok.encode(" " + t, add_special_tokens=False) for t in (TEXT, "Compare Kubelyn.", "the")]
    together = sequence_scores(model, states[:1], prefix, rows)
    alone = [sequence_scores(model, states[:1], prefix, [r])[0] for r in rows]
    assert together == pytest.approx(alone, abs=1e-4), "right padding does not leak into a shorter row"
    assert all(s < 0 for s in together)


def test_the_models_score_comparison_decides(tiny):
    model, tok, states, prefix = tiny
    heard, spoken = "Compare QVlyn with the rack.", "Compare Kubelyn with the rack."
    rows = [tok.encode(" " + t, add_special_tokens=False) for t in (heard, spoken)]
    gaps = []  # log-prob the heard transcript has over the substitution, per 'clip'
    for clip in range(2):
        orig, cand = sequence_scores(model, states[clip : clip + 1], prefix, rows)
        gaps.append(orig - cand)
    assert abs(gaps[0] - gaps[1]) > 0.05, "the two random clips support the term differently"

    def decide(clip: int, bonus: float, text: str = heard, term: str = "Kubelyn") -> str:
        cfg = BoostConfig(rescore=True, rescore_bonus=bonus, rescore_max_distance=0.6)
        out, subs = rescore(model, tok, states[clip : clip + 1], prefix, text, [term], cfg)
        assert bool(subs) == (out != text) and all(s["to"] == term for s in subs)
        return out

    for clip, gap in enumerate(gaps):
        assert decide(clip, 0.0) == (spoken if gap < 0 else heard), "bonus 0: only what the model itself prefers"
        if gap > 0.02:
            assert decide(clip, gap - 0.02) == heard, "a bonus just short of the gap is refused"
        assert decide(clip, max(gap, 0.0) + 0.02) == spoken, "a bonus just past the gap is accepted"
    # same text, same bonus, two clips: the one whose audio supports the term more takes it, the other not
    # (in whichever direction the mean gap is positive: QVlyn -> Kubelyn, or Kubelyn -> QVlyn)
    sign = 1.0 if sum(gaps) > 0 else -1.0
    text, term, other = (heard, "Kubelyn", spoken) if sign > 0 else (spoken, "QVlyn", heard)
    middle = sign * sum(gaps) / 2
    supported = min(range(2), key=lambda c: sign * gaps[c])
    assert decide(supported, middle, text, term) == other and decide(1 - supported, middle, text, term) == text


def test_rescoring_recorded_in_predictions_and_follows_a_requests_vocabulary(speech_recipe, tmp_path):
    rescoring = {"weight": 0.0, "rescore": True, "rescore_bonus": 50.0, "rescore_max_distance": 1.0}
    recipe = speech_recipe({"prompt": {"boost": rescoring}})
    version = mmadapt.run(mmadapt.load_recipe(recipe), progress=False).version_dir
    rows = [json.loads(line) for line in (version / "predictions.jsonl").read_text().splitlines()]
    subs = [s for r in rows for s in r["substituted"]]
    assert subs and all(s["gain"] > 0 for s in subs), "a bonus of 50 log-probs takes near-anything"
    clip = str(next((tmp_path / "data" / "eval").glob("*.wav")))
    own = mmadapt.load_artifact(version).predict([clip], vocabulary=["grobble queue"])[0]
    assert own.info["substituted"] and {s["to"] for s in own.info["substituted"]} == {"grobble queue"}
    assert "grobble queue" in own.output.lower()
