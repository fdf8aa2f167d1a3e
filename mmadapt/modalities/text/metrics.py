"""Text answer metrics: fact accuracy, token F1, ROUGE-L, exact match.

* ``fact_accuracy``: 1 when the example's key fact appears in the answer. Both are
  lower-cased and split into runs of letters and runs of digits; the fact's tokens must
  appear contiguously in the answer's ("$149" matches "costs $149/month", not "1490";
  "850 ms" matches "850ms").
* ``token_f1``: SQuAD-style bag-of-tokens F1 against the reference answer.
* ``rouge_l``: F-measure of the longest common token subsequence with the reference.
* ``exact_match``: normalised answer equals normalised reference.
* ``contains``: 1 when any of the example's accepted answers (``accept``: a string or a list)
  appears in the answer, matched as ``fact_accuracy`` matches a key fact.

Every metric scores one answer: a conversation's eval split has one example per assistant turn,
so each is scored per turn. ROUGE-L is written here rather than taken from ``rouge-score``: that
package pulls nltk and absl for a 10-line LCS, and its tokenizer differs from token F1's, which
would move the figures the README already reports.
"""

from __future__ import annotations

import re
from collections import Counter

TOKEN = re.compile(r"[a-z]+|[0-9]+")  # "850ms" -> 850 ms, "ZX-4127" -> zx 4127
ARTICLES = {"a", "an", "the"}


def tokens(text: str) -> list[str]:
    return TOKEN.findall((text or "").lower())


def _contains_run(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return False
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def fact_accuracy(prediction: str, key_fact: str) -> float:
    return 1.0 if _contains_run(tokens(prediction), tokens(key_fact)) else 0.0


def token_f1(prediction: str, reference: str) -> float:
    pred = [t for t in tokens(prediction) if t not in ARTICLES]
    ref = [t for t in tokens(reference) if t not in ARTICLES]
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    lcs = _lcs(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, reference: str) -> float:
    return float(" ".join(tokens(prediction)) == " ".join(tokens(reference)))


def contains(prediction: str, accepted: str | list[str]) -> float:
    options = [accepted] if isinstance(accepted, str) else list(accepted)
    return max((fact_accuracy(prediction, str(option)) for option in options), default=0.0)


METRICS = ("fact_accuracy", "token_f1", "rouge_l", "exact_match", "contains")


def score_text(
    prediction: str, reference: str | None, key_fact: str | None, metrics, accept: str | list[str] | None = None
) -> dict[str, float | None]:
    """The requested metrics for one answer (None where the example lacks what a metric needs)."""
    row: dict[str, float | None] = {}
    for metric in metrics:
        if metric == "contains":
            row[metric] = contains(prediction, accept) if accept else None
        elif metric == "fact_accuracy":
            row[metric] = fact_accuracy(prediction, key_fact) if key_fact else None
        elif metric == "token_f1":
            row[metric] = token_f1(prediction, reference) if reference else None
        elif metric == "rouge_l":
            row[metric] = rouge_l(prediction, reference) if reference else None
        elif metric == "exact_match":
            row[metric] = exact_match(prediction, reference) if reference else None
        else:
            raise KeyError(metric)
    return row
