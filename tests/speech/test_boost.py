"""Decode-time vocabulary biasing (boost.py), temperature fallback (fallback.py), per-request vocabularies
and the false-alarm / style metrics, on a tiny random Whisper built in-process."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import mmadapt
from mmadapt.cli.main import main
from mmadapt.modalities.speech.boost import BoostConfig, TermTrie, VocabularyBoost
from mmadapt.modalities.speech.fallback import FallbackConfig, compression_ratio, decode_with_fallback
from mmadapt.modalities.speech.metrics import is_comma_list, score_utterance
from mmadapt.modalities.speech.predict import _beam_decode, greedy_decode, special_ids

TERMS = ("Pellatron", "grobble queue")  # "Pellatron" is not in the tiny tokenizer's corpus: several tokens


@pytest.fixture
def tiny(tiny_whisper_dir):
    """(model, tokenizer, encoder states of two random 'clips')."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = tiny_whisper_dir
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    tok = WhisperProcessor.from_pretrained(folder).tokenizer
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        states = model.get_encoder()(feats).last_hidden_state
    return model, tok, states


def _ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_trie_continues_a_started_term_and_offers_first_tokens(tiny):
    _m, tok, _s = tiny
    trie = TermTrie(tok, TERMS)  # min_prefix_chars 0: every started term is pushed on
    spaced = _ids(tok, " Pellatron")
    assert len(spaced) >= 2
    cont, first = trie.next_tokens([])
    assert not cont and spaced[0] in first and _ids(tok, "Pellatron")[0] in first  # bare form at the start
    cont, first = trie.next_tokens([*_ids(tok, " the"), *spaced[:2]])
    assert spaced[2] in cont and first == set(trie.spaced), "mid-transcript: only the spaced forms start a term"
    guarded = TermTrie(tok, TERMS, min_prefix_chars=3)
    assert not guarded.next_tokens(spaced[:2])[0] and spaced[4] in guarded.next_tokens(spaced[:4])[0]
    cont, _ = trie.next_tokens(spaced)
    assert not cont, "a finished term is not pushed on"
    cap = _ids(tok, " Grobble queue")
    cont, _ = trie.next_tokens(cap[:-1])
    assert cap[-1] in cont, "the capitalised form is in the trie"


def test_processor_biases_each_row_by_its_own_trie_and_respects_the_guard(tiny):
    _m, tok, _s = tiny
    spaced = _ids(tok, " Pellatron")
    tries = [TermTrie(tok, ["Pellatron"]), None]
    boost = VocabularyBoost(tries, BoostConfig(weight=3.0, first_weight=1.0, min_logprob=-100.0))
    scores = torch.zeros(2, len(tok))
    out = boost(torch.tensor([spaced[:1], spaced[:1]]), scores)
    assert out[0, spaced[1]] == 3.0 and out[0, spaced[0]] == 1.0 and out[0].sum() >= 4.0
    assert torch.equal(out[1], scores[1]), "a row without a trie is untouched"
    guarded = VocabularyBoost(tries, BoostConfig(weight=3.0, min_logprob=-1.0))
    low = torch.zeros(2, len(tok))
    low[0, spaced[1]] = -50.0  # the model rules the continuation out: no boost
    assert guarded(torch.tensor([spaced[:1], spaced[:1]]), low)[0, spaced[1]] == -50.0
    beams = VocabularyBoost(tries, BoostConfig(weight=3.0), beams=2, marker=7)
    rows = torch.tensor([[7, *spaced[:1]]] * 4)  # rows 0-1 are beams of batch row 0; 2-3 of row 1
    out = beams(rows, torch.zeros(4, len(tok)))
    assert out[0, spaced[1]] == out[1, spaced[1]] == 3.0 and out[2:].abs().sum() == 0


def test_beam_take_back_lowers_a_path_that_leaves_an_unfinished_term(tiny):
    _m, tok, _s = tiny
    spaced = _ids(tok, " Pellatron")
    cfg = BoostConfig(weight=3.0, beam_first_weight=2.0, min_logprob=-100.0)
    boost = VocabularyBoost([TermTrie(tok, ["Pellatron"])], cfg, beams=1, take_back=True)
    start = boost(torch.tensor([[]], dtype=torch.long), torch.zeros(1, len(tok)))
    assert start[0, spaced[0]] == 2.0, "beam search pushes a term's first token"
    step = boost(torch.tensor([spaced[:1]]), torch.zeros(1, len(tok)))
    other = _ids(tok, " the")[0]
    assert step[0, spaced[1]] == 3.0, "the continuation keeps its bonus"
    assert step[0, other] == -2.0 and step[0, spaced[0]] == 0.0, "leaving the started term takes its bonus back"
    deeper = boost(torch.tensor([spaced[:2]]), torch.zeros(1, len(tok)))
    assert deeper[0, other] == -5.0, "what both tokens of the unfinished start were given"
    done = boost(torch.tensor([spaced]), torch.zeros(1, len(tok)))
    assert done[0, other] == 0.0, "a finished term keeps its bonus"
    unboosted = VocabularyBoost([TermTrie(tok, ["Pellatron"])], cfg, take_back=True)
    assert unboosted(torch.tensor([spaced[:2]]), torch.zeros(1, len(tok)))[0, other] == 0.0, "no bonus given, none taken back"
    greedy = VocabularyBoost([TermTrie(tok, ["Pellatron"])], cfg)
    assert greedy(torch.tensor([[]], dtype=torch.long), torch.zeros(1, len(tok)))[0, spaced[0]] == 0.0, "greedy uses first_weight (0)"


def _strong(tries):
    return VocabularyBoost(tries, BoostConfig(weight=50.0, first_weight=25.0, min_logprob=-1e9))


def test_greedy_batch_writes_each_rows_own_term(tiny):
    model, tok, states = tiny
    s = special_ids(tok)
    prefix = [s["sot"], s["notimestamps"]]
    plain = greedy_decode(model, states, [prefix, prefix], [8, 8])
    boosted = greedy_decode(
        model, states, [prefix, prefix], [8, 8], logits_processor=_strong([TermTrie(tok, [TERMS[0]]), TermTrie(tok, [TERMS[1]])])
    )
    texts = [tok.decode(r, skip_special_tokens=True).strip() for r in boosted]
    assert texts[0].startswith("Pellatron") and texts[1].lower().startswith("grobble queue"), texts
    assert boosted != plain


def test_beam_search_takes_the_boost(tiny):
    model, tok, states = tiny
    s = special_ids(tok)
    prefix = [s["sot"], s["notimestamps"]]
    tries = [TermTrie(tok, [TERMS[0]]), TermTrie(tok, [TERMS[1]])]
    rows = _beam_decode(
        model, states, [prefix, prefix], [8, 8], 2,
        processor_for=lambda rs, k: VocabularyBoost([tries[r] for r in rs], BoostConfig(weight=50.0, first_weight=25.0, min_logprob=-1e9),
                                      beams=k, marker=s["notimestamps"]),
    )
    texts = [tok.decode(r, skip_special_tokens=True).strip() for r in rows]
    assert texts[0].startswith("Pellatron") and texts[1].lower().startswith("grobble queue"), texts


def test_a_looping_window_is_redecoded_at_a_higher_temperature(tiny):
    model, tok, states = tiny
    s = special_ids(tok)
    loop = _ids(tok, " the")[0]

    def force_loop(generated, logits):  # greedy decoding that repeats " the" to the token cap
        logits = logits.clone()
        logits[:, loop] += 1e4
        return logits

    def decode(rows, temperature, seed):
        sums: list[float] = []
        gen = torch.Generator().manual_seed(seed) if temperature > 0 else None
        out = greedy_decode(model, states[rows], [[s["sot"], s["notimestamps"]]] * len(rows), [24] * len(rows),
                            logits_processor=force_loop if temperature == 0 else None, temperature=temperature,
                            generator=gen, logprob_sums=sums)
        return out, sums

    text = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    greedy, _ = decode([0], 0.0, 0)
    assert compression_ratio(text(greedy[0])) > 2.4, "the forced greedy decode loops"
    ids, temps = decode_with_fallback(decode, [0, 1], text, FallbackConfig(enabled=True))
    for row in (0, 1):
        assert temps[row] > 0.0 and ids[row] != greedy[0]
        assert text(ids[row]).count(" the the the") == 0, text(ids[row])
    again, temps_again = decode_with_fallback(decode, [0, 1], text, FallbackConfig(enabled=True))
    assert again == ids and temps_again == temps, "seeded: the same samples"
    off, temps_off = decode_with_fallback(decode, [0], text, FallbackConfig(enabled=False))
    assert temps_off == {0: 0.0} and off[0] == greedy[0]


def test_false_terms_and_style_are_defined_on_every_clip():
    vocab = ["Zentrix", "Kubelyn", "flarn cache"]
    clean = score_utterance("the weather is nice today", "the weather is nice today", vocab)
    assert clean["false_terms"] == 0 and clean["false_alarm_rate"] == 0.0 and clean["term_precision"] is None
    alarm = score_utterance("the weather is nice today", "the Zentrix is nice, Kubelyn", vocab)
    assert alarm["false_terms"] == 2 and alarm["false_alarm_rate"] == 1.0 and alarm["false_term_names"] == ["kubelyn", "zentrix"]
    assert is_comma_list("Kubelyn, Gate, Way forward, Zentrix, Tournan, Kash.")
    assert not is_comma_list("Restart Zentrix, then check the flarn cache and the Kubelyn sync.")
    assert score_utterance("a b", "Kubelyn, Gate, Way forward, Zentrix.", vocab)["style"] == 1.0
    from mmadapt.modalities.speech.metrics import aggregate

    corpus = aggregate([clean, alarm])
    assert corpus["false_terms"] == 1.0 and corpus["false_alarm_rate"] == 0.5 and corpus["style"] == 0.0


def test_per_request_vocabulary_through_ask_batch_and_the_library(speech_recipe, tmp_path):
    recipe = speech_recipe(
        {"prompt": {"boost": {"weight": 50.0, "first_weight": 25.0, "min_logprob": -1e9}}},
        inference={"fallback": {"enabled": True, "compression_ratio_threshold": 0.01}},  # every window falls back: temperature recorded
    )
    result = mmadapt.run(mmadapt.load_recipe(recipe), progress=False)
    version = result.version_dir
    rows = [json.loads(line) for line in (version / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["temperature"] == 1.0 for r in rows) and all("false_terms" in r and "style" in r for r in rows)
    clip = str(next((tmp_path / "data" / "eval").glob("*.wav")))

    loaded = mmadapt.load_artifact(version)
    default, own = loaded.predict([clip]), loaded.predict([clip], vocabulary=["grobble queue"])
    assert own[0].sources == ["grobble queue"] and default[0].sources != own[0].sources

    terms = tmp_path / "terms.txt"
    terms.write_text("grobble queue\n")
    asked = CliRunner().invoke(main, ["ask", str(version), clip, "--vocabulary", str(terms)])
    assert asked.exit_code == 0 and "prompt terms: grobble queue" in asked.output, asked.output

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"audio": clip, "vocabulary": ["grobble queue"]}) + "\n" + json.dumps({"audio": clip}) + "\n")
    out = tmp_path / "out.jsonl"
    batch = CliRunner().invoke(main, ["batch", str(version), "--inputs", str(inputs), "--output", str(out)])
    assert batch.exit_code == 0, batch.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["sources"] == ["grobble queue"] and lines[1]["sources"] == default[0].sources

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    bad = CliRunner().invoke(main, ["ask", str(version), clip, "--vocabulary", str(empty)])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1 and "empty.txt" in bad.output, bad.output
    terms.write_text("word " * 300 + "\n")
    long = CliRunner().invoke(main, ["ask", str(version), clip, "--vocabulary", str(terms)])
    errors = [line for line in long.output.splitlines() if line.startswith("error")]  # (above it: transformers' load bar)
    assert long.exit_code == 2 and len(errors) == 1 and "longer than the prompt budget" in errors[0], long.output
    assert "Traceback" not in long.output
    inputs.write_text(json.dumps({"audio": clip, "vocabulary": []}) + "\n")
    empty_line = CliRunner().invoke(main, ["batch", str(version), "--inputs", str(inputs), "--output", str(tmp_path / "o2.jsonl")])
    assert empty_line.exit_code == 2 and "in.jsonl:1" in empty_line.output and not (tmp_path / "o2.jsonl").exists()
