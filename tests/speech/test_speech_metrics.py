"""WER / CER / B-WER / U-WER / term recall and precision on hand-computed cases."""

from __future__ import annotations

import jiwer
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmadapt.modalities.speech.metrics import (
    aggregate,
    align_words,
    cer,
    char_edit_distance,
    is_comma_list,
    normalize,
    score_corpus,
    score_utterance,
    term_pattern,
    wer,
)

VOCAB = ["Zentrix", "p99", "QPX-9", "flarn cache", "Kubelyn"]


def test_normaliser_keeps_terms_whole_and_treats_both_sides_alike():
    text = "Check QPX-9, p99 and 25 percent. Flarn-cache!"
    assert normalize(text) == "check qpx 9 p 99 and 25% flarn cache"
    assert normalize(text, VOCAB) == "check qpx-9 p99 and 25% flarn cache"
    # spelling variants of a term normalise to the same canonical form
    for variant in ("qpx 9", "QPX9", "Qpx.9", "QPX-9"):
        assert normalize(f"the {variant} unit", VOCAB) == "the qpx-9 unit"
    assert normalize("P 99", VOCAB) == "p99"
    # a term inside a longer word is not a term
    assert normalize("zentrixes kubelynx", VOCAB) == "zentrixes kubelynx"


def test_term_pattern_needs_letters_or_digits():
    with pytest.raises(ValueError):
        term_pattern("--")


def test_alignment_counts():
    a = align_words("a b c d".split(), "a x c d e".split())
    assert (a.hits, a.substitutions, a.deletions, a.insertions) == (3, 1, 0, 1)
    a = align_words("a b c".split(), [])
    assert (a.deletions, a.errors) == (3, 3)
    assert align_words([], []).ops == ()


def test_char_edit_distance():
    assert char_edit_distance("kitten", "sitting") == 3
    assert char_edit_distance("", "abc") == 3
    assert char_edit_distance("abc", "abc") == 0


def test_substituted_term_is_a_biased_error():
    # ref: the zentrix dashboard shows p99 latency (6 words; zentrix and p99 biased)
    # hyp: the centrics dashboard shows p99 latency -> 1 substitution on "zentrix"
    r = score_utterance("The Zentrix dashboard shows p99 latency.", "the centrics dashboard shows P 99 latency", VOCAB)
    assert (r["ref_words"], r["substitutions"], r["deletions"], r["insertions"]) == (6, 1, 0, 0)
    assert r["wer"] == pytest.approx(1 / 6)
    assert (r["b_words"], r["b_errors"], r["u_words"], r["u_errors"]) == (2, 1, 4, 0)
    assert r["b_wer"] == 0.5 and r["u_wer"] == 0.0
    assert (r["terms_ref"], r["terms_hyp"], r["term_hits"]) == (2, 1, 1)
    assert r["term_recall"] == 0.5 and r["term_precision"] == 1.0
    assert r["missed_terms"] == ["zentrix"] and r["false_term_names"] == [] and r["false_terms"] == 0
    # CER: "zentrix" -> "centrics" is 3 character edits over the 39 characters of the normalised reference
    assert r["ref_chars"] == len("the zentrix dashboard shows p99 latency") == 39
    assert r["char_errors"] == 3 and r["cer"] == pytest.approx(3 / 39)


def test_deleted_multiword_term_counts_each_word():
    r = score_utterance("Enable the flarn cache now.", "enable the now", VOCAB)
    assert (r["ref_words"], r["deletions"], r["b_words"], r["b_errors"]) == (5, 2, 2, 2)
    assert r["b_wer"] == 1.0 and r["u_wer"] == 0.0 and r["wer"] == pytest.approx(2 / 5)
    assert r["term_recall"] == 0.0 and r["term_precision"] is None
    assert r["missed_terms"] == ["flarn cache"]


def test_inserted_term_is_a_biased_insertion_and_a_false_term():
    # ref: restart the cache ; hyp: restart the flarn cache -> "flarn" inserted, it belongs to a term in the hypothesis
    r = score_utterance("restart the cache", "restart the flarn cache", VOCAB)
    assert (r["insertions"], r["b_errors"], r["u_errors"]) == (1, 1, 0)
    assert r["b_words"] == 0 and r["b_wer"] is None and r["u_wer"] == 0.0
    assert r["wer"] == pytest.approx(1 / 3)
    assert r["term_recall"] is None and r["term_precision"] == 0.0
    assert r["false_term_names"] == ["flarn cache"] and r["false_terms"] == 1


def test_plain_insertion_is_unbiased():
    r = score_utterance("deploy Kubelyn today", "please deploy kubelyn today", VOCAB)
    assert (r["insertions"], r["b_errors"], r["u_errors"], r["b_wer"], r["u_wer"]) == (1, 0, 1, 0.0, 0.5)
    assert r["term_recall"] == 1.0 and r["term_precision"] == 1.0


def test_repeated_terms_are_counted_per_occurrence():
    r = score_utterance("Zentrix talks to Zentrix", "Zentrix talks to Zentrix and Zentrix", VOCAB)
    assert (r["terms_ref"], r["terms_hyp"], r["term_hits"]) == (2, 3, 2)
    assert r["term_recall"] == 1.0 and r["term_precision"] == pytest.approx(2 / 3)
    assert r["false_term_names"] == ["zentrix"] and r["false_alarm_rate"] == 1.0


def test_empty_reference_and_hypothesis():
    assert score_utterance("", "", VOCAB)["wer"] == 0.0
    r = score_utterance("", "hello", VOCAB)
    assert r["wer"] == 1.0 and r["insertions"] == 1
    r = score_utterance("hello there", "", VOCAB)
    assert r["wer"] == 1.0 and r["cer"] == 1.0


def test_corpus_aggregate_is_count_weighted_and_has_the_median():
    refs = ["the Zentrix dashboard shows p99 latency", "enable the flarn cache now", "good morning"]
    hyps = ["the centrics dashboard shows p99 latency", "enable the now", "good morning"]
    rows, agg = score_corpus(refs, hyps, VOCAB, ids=["a", "b", "c"])
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    # errors 1 + 2 + 0 over words 6 + 5 + 2
    assert agg["wer"] == pytest.approx(3 / 13)
    assert agg["median_wer"] == pytest.approx(1 / 6)  # per-utterance 1/6, 2/5, 0
    assert agg["mean_wer"] == pytest.approx((1 / 6 + 2 / 5 + 0) / 3)
    # biased words: zentrix, p99 | flarn, cache -> 4 ; errors 1 + 2
    assert agg["b_wer"] == pytest.approx(3 / 4) and agg["u_wer"] == 0.0
    assert agg["term_recall"] == pytest.approx(1 / 3)  # p99 hit; zentrix and flarn cache missed
    assert agg["term_precision"] == 1.0
    assert wer(refs, hyps, VOCAB) == agg["wer"]
    assert cer(refs, hyps, VOCAB) == agg["cer"]
    assert aggregate([])["wer"] is None
    with pytest.raises(ValueError):
        score_corpus(["a"], [])


def test_term_protection_changes_wer_only_through_terms():
    # without protection "p99" is two words "p 99"; with it, one
    assert score_utterance("p99 is fine", "p99 is fine")["ref_words"] == 4
    assert score_utterance("p99 is fine", "p99 is fine", VOCAB)["ref_words"] == 3


WORDS = st.lists(st.sampled_from(["a", "b", "c", "zentrix", "flarn", "cache"]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(WORDS, WORDS)
def test_alignment_matches_jiwer_and_counts_are_consistent(ref, hyp):
    r = score_utterance(" ".join(ref), " ".join(hyp), VOCAB)
    a = align_words(ref, hyp)
    assert a.hits + a.substitutions + a.deletions == len(ref)
    assert a.hits + a.substitutions + a.insertions == len(hyp)
    if ref:
        out = jiwer.process_words(" ".join(ref), " ".join(hyp) if hyp else "")
        assert a.errors == out.substitutions + out.deletions + out.insertions
    assert r["b_errors"] + r["u_errors"] == r["word_errors"]
    assert r["b_words"] + r["u_words"] == r["ref_words"]
    assert r["term_hits"] <= min(r["terms_ref"], r["terms_hyp"])
    if ref == hyp:
        assert r["word_errors"] == 0 and r["cer"] == 0.0


# Transcripts of shipped clips by tiny.en (greedy), without and with the default vocabulary prompt,
# beside their references: the glossary-style lists the style metric counts ...
GLOSSARY_LISTS = [
    ("NoBobby, Lotus, not Scaled, Muffa, Road.", "Nobody noticed the skelp buffer grow."),
    ("NoBobby, Lotus, Murf-Schelp, Muffa, Rope.", "Nobody noticed the skelp buffer grow."),
    ("Before lunch, migrate, Draxel, TQL, VN-7,", "Before lunch, migrate Draxel to KVN-7."),
    ("Kubelyn, Gate, Way forward, Zentrix, Tournan, Kash.", "Restart the Kubelyn gateway."),  # the issue's
]
# ... and sentences with pause commas (lowercase), or whose commas are mostly the reference's own, that it does not.
SENTENCES = [
    ("Wazzle check, stall, your ring, the 3nd row.", "The wuzzle check stalled during the Frennik rollout."),
    ("Compare, make, store, win, sing, call, un-the TQ, l-rack.", "Compare Vextora with Synkora on the TQL rack."),
    ("No body no wisdom at Lord, sink, roll.", "Nobody noticed the plorb sync grow."),
    ("The rindle log, stall, yarrowing, mmm, rue log.", "The brindle log stalled during the Corvanta rollout."),
    ("Why, first, Jexaline, ignore the yarrowing setting.", "Why does Jexaline ignore the yarrowing setting?"),
    ("Before lunch, migrate quorbit, TQPX-9,", "Before lunch, migrate Quorbit to QPX-9."),
    ("Swap the VQ-200 card, Nimbrel, Q.", "Swap the VQ-200 cards, then the grobble queue."),
    ("Zentrix, Kubelyn, Vextora.", "Zentrix, Kubelyn, Vextora."),  # the reference is itself that list
    ("Roll back, Mintrix, if it's your next 12 fails.", "Roll back Zentrix if HLX-12 fails."),  # train clips
    ("Roll back jigsaw, I'm P-F-H-A-Lix, 12 fails.", "Roll back Jexaline if HLX-12 fails."),
    ("I'm your host, I'm your host, I'm your host, I'm your host,", "Roll back Vextora if TQL fails."),  # a loop
]


@pytest.mark.parametrize("hypothesis,reference", GLOSSARY_LISTS)
def test_glossary_style_lists_count_as_comma_lists(hypothesis, reference):
    assert is_comma_list(hypothesis, reference) and is_comma_list(hypothesis)
    assert score_utterance(reference, hypothesis)["style"] == 1.0


@pytest.mark.parametrize("hypothesis,reference", SENTENCES)
def test_sentences_with_commas_are_not_comma_lists(hypothesis, reference):
    assert not is_comma_list(hypothesis, reference)
    assert score_utterance(reference, hypothesis)["style"] == 0.0
