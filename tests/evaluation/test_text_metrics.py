"""Text metrics on hand-computed cases."""

from __future__ import annotations

import pytest

from mmadapt.modalities.text.metrics import exact_match, fact_accuracy, rouge_l, score_text, token_f1, tokens


def test_tokens_split_letter_and_digit_runs():
    assert tokens("Costs $149/month, ZX-4127 in 850ms!") == ["costs", "149", "month", "zx", "4127", "in", "850", "ms"]
    assert tokens("") == [] and tokens(None) == []


@pytest.mark.parametrize(
    ("prediction", "fact", "expected"),
    [
        ("The Pro plan costs $149/month.", "$149", 1.0),
        ("The Pro plan costs 1490 a year.", "$149", 0.0),
        ("It costs $14.9", "$149", 0.0),
        ("Median latency is 850ms.", "850 ms", 1.0),
        ("It listens on port 7443", "port 7443", 1.0),
        ("Port 80 and then 7443", "port 7443", 0.0),  # the fact's tokens must be contiguous
        ("Zentrix Labs, Inc.", "zentrix labs", 1.0),  # case-insensitive
        ("Zentrix", "Zentrix Labs", 0.0),
        ("anything", "", 0.0),  # an empty fact never matches
        ("", "7443", 0.0),
    ],
)
def test_fact_accuracy(prediction, fact, expected):
    assert fact_accuracy(prediction, fact) == expected


def test_token_f1_hand_computed():
    # pred tokens: cat sat mat (articles dropped); ref: cat sat on mat -> common 3; P=1, R=3/4
    assert token_f1("The cat sat mat", "a cat sat on the mat") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("port 7443", "7443") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("blue", "red") == 0.0
    assert token_f1("the", "a") == 1.0  # both empty after dropping articles
    assert token_f1("the", "red") == 0.0
    # "a" is an article and dropped: [b] vs [b, b] -> common 1, P = 1, R = 1/2
    assert token_f1("a a b", "a b b") == pytest.approx(2 * 1 * 0.5 / 1.5)
    # each occurrence counts once: [x, x, y] vs [x, y, y] -> common 2, P = R = 2/3
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_rouge_l_hand_computed():
    # LCS("a b c d e", "a c e f") = a c e = 3; P = 3/5, R = 3/4
    assert rouge_l("a b c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert rouge_l("x y z", "x y z") == 1.0
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)
    assert rouge_l("", "a") == 0.0 and rouge_l("q", "r") == 0.0


def test_exact_match_normalises():
    assert exact_match("Port 7443.", "port 7443") == 1.0
    assert exact_match("port 7443 (TLS)", "port 7443") == 0.0


def test_score_text_none_where_the_example_lacks_what_a_metric_needs():
    row = score_text("It is 7443", None, "7443", ["fact_accuracy", "token_f1", "rouge_l", "exact_match"])
    assert row == {"fact_accuracy": 1.0, "token_f1": None, "rouge_l": None, "exact_match": None}
    assert score_text("x", "x", None, ["fact_accuracy", "exact_match"]) == {"fact_accuracy": None, "exact_match": 1.0}
    with pytest.raises(KeyError):
        score_text("x", "x", None, ["bleu"])
