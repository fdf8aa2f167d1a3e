"""Speech recognition metrics: WER, CER, biased / unbiased WER and term recall / precision.

All functions are pure: strings in, numbers and plain dicts out.

Normalisation
    References and hypotheses go through the same normaliser: Whisper's English text
    normaliser (``transformers``' ``EnglishTextNormalizer``; lower case, punctuation and
    fillers removed, numbers standardised) — except that **vocabulary terms are protected**.
    The normaliser would turn "p99" into "p 99" and "QPX-9" into "qpx 9", changing the
    number of words of a term and hiding whether it was recognised. Each occurrence of a
    term (case-insensitive, on word boundaries, and allowing "QPX-9", "QPX 9", "QPX.9" and
    "QPX9" alike) is replaced by a letters-only placeholder before normalising and by the
    term's canonical form afterwards: the term lower-cased, spelled as in the vocabulary
    ("qpx-9", "flarn cache"). Canonical words are split on spaces, so "flarn cache" is two
    words. No British->American spelling map is applied (Whisper's ``english.json`` is not
    shipped offline); both sides are treated alike, so this only matters for such spellings.

Alignment
    A word-level Levenshtein alignment (unit costs; ties prefer a substitution, then a
    deletion, then an insertion). Its edit count equals ``jiwer``'s.

B-WER / U-WER (the "biased WER" of contextual-biasing papers, e.g. Le et al., 2021)
    Reference words are *biased* when they belong to an occurrence of a vocabulary term.
    Substitutions and deletions count against the reference word they hit; an insertion
    counts as biased when the inserted hypothesis word belongs to a term occurrence in the
    hypothesis, unbiased otherwise. Then
    ``B-WER = biased errors / biased reference words`` and
    ``U-WER = unbiased errors / unbiased reference words``; B-WER + U-WER weighted by their
    word counts gives the WER.

Term recall / precision
    Occurrences of vocabulary terms are counted in the normalised reference and hypothesis.
    Per term, ``hits = min(count in reference, count in hypothesis)``;
    ``recall = hits / reference occurrences``; ``precision = hits / hypothesis occurrences``
    (a term in the hypothesis that the reference does not hold is a false term insertion).
    An undefined ratio (0 / 0) is ``None``.

False alarms and style (defined on every clip, so paired differences cover every clip)
    ``false_terms``: how many vocabulary terms the hypothesis writes beyond those said (0 where
    none; the terms themselves are in ``false_term_names``); ``false_alarm_rate``: 1.0 when a
    clip has any, else 0.0 (corpus: the share of clips with a false alarm, and ``false_terms``
    the mean per clip). ``style``: 1.0 when the transcript came out as a comma list of short,
    mostly capitalised items (the style of a ``Glossary:`` prompt) where the reference is a
    sentence (:func:`is_comma_list`);
    the corpus figure is the share of such clips.

Aggregates
    :func:`aggregate` sums counts over utterances (corpus WER = all word errors / all
    reference words, likewise CER, B-WER, U-WER, recall, precision) and adds the mean
    and median of the per-utterance WER.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = [
    "Alignment",
    "aggregate",
    "align_words",
    "cer",
    "char_edit_distance",
    "normalize",
    "score_corpus",
    "score_utterance",
    "term_pattern",
    "wer",
]

_SEPARATORS = r"[\s\-_.]?"
_PLACEHOLDER_PREFIX = "zqxterm"


@lru_cache(maxsize=1)
def _english_normalizer():
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer({})


def canonical_term(term: str) -> str:
    """The form a term takes in normalised text: lower case, inner whitespace collapsed."""
    return " ".join(term.lower().split())


def term_pattern(term: str) -> str:
    """A regex (case-insensitive use) matching ``term`` on word boundaries with any of
    ``-``, ``_``, ``.``, a space or nothing between its letter and digit runs ("QPX-9" ~ "qpx 9" ~ "QPX9",
    "p99" ~ "P 99")."""
    runs = re.findall(r"[^\W\d_]+|\d+", term)
    if not runs:
        raise ValueError(f"term {term!r} holds no letters or digits")
    return r"(?<![^\W_])" + _SEPARATORS.join(re.escape(r) for r in runs) + r"(?![^\W_])"


@lru_cache(maxsize=64)
def _term_matcher(terms: tuple[str, ...]) -> tuple[re.Pattern[str] | None, tuple[str, ...]]:
    """One alternation over all terms, longest first (so "flarn cache" wins over "flarn")."""
    unique = sorted({canonical_term(t) for t in terms if t and t.strip()}, key=lambda t: (-len(t), t))
    if not unique:
        return None, ()
    pattern = "|".join(f"(?P<t{i}>{term_pattern(t)})" for i, t in enumerate(unique))
    return re.compile(pattern, re.IGNORECASE), tuple(unique)


def _placeholder(index: int) -> str:
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return f"{_PLACEHOLDER_PREFIX}{letters}q"


def normalize_with_spans(text: str, terms: Iterable[str] = ()) -> tuple[list[str], list[str | None]]:
    """Normalised words of ``text`` and, per word, the canonical term it belongs to (or ``None``)."""
    matcher, canon = _term_matcher(tuple(terms))
    placeholders: dict[str, str] = {}
    if matcher is not None:

        def swap(m: re.Match[str]) -> str:
            index = int(m.lastgroup[1:])  # type: ignore[index]
            ph = _placeholder(index)
            placeholders[ph] = canon[index]
            return f" {ph} "

        text = matcher.sub(swap, text)
    words: list[str] = []
    owners: list[str | None] = []
    for token in _english_normalizer()(text).split():
        term = placeholders.get(token)
        if term is None:
            words.append(token)
            owners.append(None)
        else:
            for word in term.split():
                words.append(word)
                owners.append(term)
    return words, owners


def normalize(text: str, terms: Iterable[str] = ()) -> str:
    """``text`` through Whisper's English normaliser with the vocabulary ``terms`` kept intact."""
    return " ".join(normalize_with_spans(text, terms)[0])


def _term_occurrences(owners: Sequence[str | None]) -> Counter[str]:
    """Count term occurrences from the per-word owners (a multi-word term spans several words)."""
    counts: Counter[str] = Counter()
    i = 0
    while i < len(owners):
        term = owners[i]
        if term is None:
            i += 1
            continue
        counts[term] += 1
        i += len(term.split())
    return counts


@dataclass(frozen=True)
class Alignment:
    """A word alignment: ``ops`` is a list of (op, ref_index, hyp_index), op in "=", "S", "D", "I"."""

    ops: tuple[tuple[str, int | None, int | None], ...]

    @property
    def substitutions(self) -> int:
        return sum(op == "S" for op, _, _ in self.ops)

    @property
    def deletions(self) -> int:
        return sum(op == "D" for op, _, _ in self.ops)

    @property
    def insertions(self) -> int:
        return sum(op == "I" for op, _, _ in self.ops)

    @property
    def hits(self) -> int:
        return sum(op == "=" for op, _, _ in self.ops)

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def align_words(ref: Sequence[str], hyp: Sequence[str]) -> Alignment:
    """Minimum-edit alignment of two word sequences (unit costs; ties: substitution, deletion, insertion)."""
    n, m = len(ref), len(hyp)
    dist = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        dist[i][0] = i
    for j in range(1, m + 1):
        dist[0][j] = j
    for i in range(1, n + 1):
        row, prev = dist[i], dist[i - 1]
        r = ref[i - 1]
        for j in range(1, m + 1):
            row[j] = min(prev[j - 1] + (r != hyp[j - 1]), prev[j] + 1, row[j - 1] + 1)
    ops: list[tuple[str, int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        if i > 0 and j > 0 and dist[i][j] == dist[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("=" if ref[i - 1] == hyp[j - 1] else "S", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i > 0 and dist[i][j] == dist[i - 1][j] + 1:
            ops.append(("D", i - 1, None))
            i -= 1
        else:
            ops.append(("I", None, j - 1))
            j -= 1
    return Alignment(tuple(reversed(ops)))


def char_edit_distance(ref: str, hyp: str) -> int:
    """Levenshtein distance between two strings (characters, spaces included)."""
    if len(ref) < len(hyp):
        ref, hyp = hyp, ref
    previous = list(range(len(hyp) + 1))
    for i, a in enumerate(ref, 1):
        current = [i]
        for j, b in enumerate(hyp, 1):
            current.append(min(previous[j - 1] + (a != b), previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1]


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _utterance_rate(errors: int, n: int) -> float:
    """Errors per reference unit; an empty reference scores 0.0 when matched exactly, else 1.0."""
    if n:
        return errors / n
    return 0.0 if errors == 0 else 1.0


def _comma_items(text: str) -> list[str]:
    return [item.strip() for item in text.strip().rstrip(".!?,;: ").split(",") if item.strip()]


_NAME_START = re.compile(r"\W*[A-Z0-9]")
_PRONOUN_I = re.compile(r"\W*I(?:['’](?:m|ll|ve|d))?\b")


def is_comma_list(text: str, reference: str | None = None) -> bool:
    """The transcript came out as a list in a glossary's style (``Zentrix, Gate, Way forward, QPX-9.``):
    three or more comma-separated items, all of at most three words but possibly one; of the items
    after the first (whose capital any sentence has) more than half begin with a capital or a digit
    (names, terms, codes; the pronoun I does not count), where a sentence cut by pause commas
    (``The brindle log, stall, yarrowing, rollout.``) is lowercase; and, given the ``reference``, at
    least two items more than it has (its own commas, ``Before lunch, migrate ...``, make no list)."""
    items = _comma_items(text)
    if len(items) < 3 or sum(len(item.split()) <= 3 for item in items) < len(items) - 1:
        return False
    named = [bool(_NAME_START.match(item)) and not _PRONOUN_I.match(item) for item in items[1:]]
    if 2 * sum(named) <= len(named):
        return False
    return reference is None or len(items) - len(_comma_items(reference)) >= 2


def score_utterance(reference: str, hypothesis: str, terms: Iterable[str] = (), id: str = "") -> dict[str, Any]:
    """Every metric of one utterance as a flat row (counts too, so rows can be aggregated).

    ``terms`` is the vocabulary (all terms, not just those of this utterance): a vocabulary
    term that appears in the hypothesis but not in the reference is a false term insertion.
    """
    terms = tuple(terms)
    ref_words, ref_owner = normalize_with_spans(reference, terms)
    hyp_words, hyp_owner = normalize_with_spans(hypothesis, terms)
    alignment = align_words(ref_words, hyp_words)

    b_errors = u_errors = 0
    for op, ri, hi in alignment.ops:
        if op == "=":
            continue
        biased = ref_owner[ri] is not None if op in ("S", "D") else hyp_owner[hi] is not None  # type: ignore[index]
        if biased:
            b_errors += 1
        else:
            u_errors += 1
    b_words = sum(o is not None for o in ref_owner)
    u_words = len(ref_words) - b_words

    ref_terms, hyp_terms = _term_occurrences(ref_owner), _term_occurrences(hyp_owner)
    hits = {t: min(c, hyp_terms.get(t, 0)) for t, c in ref_terms.items()}
    n_hits = sum(hits.values())
    false = sorted(t for t, c in hyp_terms.items() for _ in range(c - min(c, ref_terms.get(t, 0))))
    ref_text, hyp_text = " ".join(ref_words), " ".join(hyp_words)
    char_errors = char_edit_distance(ref_text, hyp_text)
    return {
        "id": id,
        "reference": reference,
        "hypothesis": hypothesis,
        "ref_norm": ref_text,
        "hyp_norm": hyp_text,
        "ref_words": len(ref_words),
        "substitutions": alignment.substitutions,
        "deletions": alignment.deletions,
        "insertions": alignment.insertions,
        "word_errors": alignment.errors,
        "wer": _utterance_rate(alignment.errors, len(ref_words)),
        "ref_chars": len(ref_text),
        "char_errors": char_errors,
        "cer": _utterance_rate(char_errors, len(ref_text)),
        "b_words": b_words,
        "b_errors": b_errors,
        "b_wer": _ratio(b_errors, b_words),
        "u_words": u_words,
        "u_errors": u_errors,
        "u_wer": _ratio(u_errors, u_words),
        "terms_ref": sum(ref_terms.values()),
        "terms_hyp": sum(hyp_terms.values()),
        "term_hits": n_hits,
        "term_recall": _ratio(n_hits, sum(ref_terms.values())),
        "term_precision": _ratio(n_hits, sum(hyp_terms.values())),
        "missed_terms": sorted(t for t, c in ref_terms.items() for _ in range(c - hits[t])),
        "false_term_names": false,
        "false_terms": len(false),
        "false_alarm_rate": 1.0 if false else 0.0,
        "style": 1.0 if is_comma_list(hypothesis, reference) else 0.0,
    }


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Corpus-level metrics from :func:`score_utterance` rows (count-weighted, plus mean/median WER)."""

    def total(key: str) -> int:
        return sum(int(r[key]) for r in rows)

    wers = [r["wer"] for r in rows]
    return {
        "utterances": len(rows),
        "ref_words": total("ref_words"),
        "wer": _ratio(total("word_errors"), total("ref_words")),
        "mean_wer": statistics.fmean(wers) if wers else None,
        "median_wer": statistics.median(wers) if wers else None,
        "cer": _ratio(total("char_errors"), total("ref_chars")),
        "substitutions": total("substitutions"),
        "deletions": total("deletions"),
        "insertions": total("insertions"),
        "b_wer": _ratio(total("b_errors"), total("b_words")),
        "u_wer": _ratio(total("u_errors"), total("u_words")),
        "b_words": total("b_words"),
        "u_words": total("u_words"),
        "term_recall": _ratio(total("term_hits"), total("terms_ref")),
        "term_precision": _ratio(total("term_hits"), total("terms_hyp")),
        "terms_ref": total("terms_ref"),
        "terms_hyp": total("terms_hyp"),
        "term_hits": total("term_hits"),
        "false_terms": statistics.fmean(r["false_terms"] for r in rows) if rows else None,
        "false_alarm_rate": statistics.fmean(r["false_alarm_rate"] for r in rows) if rows else None,
        "style": statistics.fmean(r["style"] for r in rows) if rows else None,
    }


def score_corpus(
    references: Sequence[str], hypotheses: Sequence[str], terms: Iterable[str] = (), ids: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-utterance rows and the corpus aggregate of paired references and hypotheses."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    terms = tuple(terms)
    ids = list(ids) if ids is not None else [str(i) for i in range(len(references))]
    rows = [score_utterance(r, h, terms, id=i) for r, h, i in zip(references, hypotheses, ids)]
    return rows, aggregate(rows)


def wer(references: Sequence[str], hypotheses: Sequence[str], terms: Iterable[str] = ()) -> float | None:
    """Corpus WER after normalisation (term-protected when ``terms`` are given)."""
    return score_corpus(references, hypotheses, terms)[1]["wer"]


def cer(references: Sequence[str], hypotheses: Sequence[str], terms: Iterable[str] = ()) -> float | None:
    """Corpus CER after normalisation (characters of the normalised text, spaces included)."""
    return score_corpus(references, hypotheses, terms)[1]["cer"]
