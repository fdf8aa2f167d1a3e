"""Vocabulary biasing after decoding: near-miss spans swapped for terms, kept only where Whisper agrees.

Contextual spelling correction checked by the acoustic model (N-best rescoring of substitutions):
tiny.en usually hears an invented term's first token wrong ("QVlyn" for Kubelyn), which the
decode-time boost (boost.py) cannot undo without pushing correct words too. So after a window is
decoded, every span of 1 to ``rescore_max_words`` words whose letters are within
``rescore_max_distance`` (normalised Levenshtein distance over lowercase letters and digits,
rapidfuzz) of a term becomes a candidate transcript with the term in its place. The original and
every candidate are scored by the same decoder, teacher-forced on the same encoder states under the
same prompt (sum of token log-probs, end-of-text included, the tokens ``generate`` suppresses masked
as in decoding; one batched forward per window). A
substitution is kept only when candidate score + ``rescore_bonus`` > original score: the audio
(through the model) must support the term, so speech that holds no term keeps its words.
Non-overlapping winners are combined, best gain first; the combination is scored once more and kept
only if it beats the original by less than one bonus per term, otherwise only the best one is kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from rapidfuzz.distance import Levenshtein

_EDGE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


def letters(text: str) -> str:
    """Lowercase letters and digits only (what the distance compares)."""
    return "".join(c for c in text.lower() if c.isalnum())


@dataclass(frozen=True)
class Candidate:
    start: int  # first word of the span
    end: int  # one past its last word
    term: str
    text: str  # the transcript with the span replaced
    distance: float


def candidates(text: str, terms: Sequence[str], max_distance: float, max_words: int, limit: int) -> list[Candidate]:
    """Transcripts with one near-miss span replaced by a term, nearest first (at most ``limit``)."""
    words = text.split()
    keys = {t: letters(t) for t in dict.fromkeys(terms) if letters(t)}
    found: dict[tuple[int, int, str], Candidate] = {}
    spans = {
        (start, end): letters(" ".join(words[start:end]))
        for start in range(len(words))
        for end in range(start + 1, min(len(words), start + max_words) + 1)
    }
    written = {i for (start, end), span in spans.items() if span in keys.values() for i in range(start, end)}
    for (start, end), span in spans.items():
        if not span or written.intersection(range(start, end)):  # a term already written stays as it is
            continue
        for term, key in keys.items():
            if abs(len(span) - len(key)) > max_distance * max(len(span), len(key)):
                continue  # too long or too short to be within the distance
            dist = Levenshtein.normalized_distance(span, key)
            if dist <= max_distance:
                found[(start, end, term)] = Candidate(start, end, term, replace(words, start, end, term), dist)
    return sorted(found.values(), key=lambda c: (c.distance, c.start, c.term))[:limit]


def swap(words: Sequence[str], start: int, end: int, term: str) -> str:
    """What replaces ``words[start:end]``: ``term`` with the span's outer punctuation."""
    lead = _EDGE.match(words[start]).group(1)
    trail = _EDGE.match(words[end - 1]).group(3)
    if start == 0 and words[0][:1].isupper() and term[:1].islower():
        term = term[0].upper() + term[1:]  # the first word of a transcript is capitalised
    return lead + term + trail


def replace(words: Sequence[str], start: int, end: int, term: str) -> str:
    return " ".join([*words[:start], swap(words, start, end, term), *words[end:]])


def combine(words: Sequence[str], chosen: Sequence[Candidate]) -> str:
    """``words`` with every (non-overlapping) chosen span replaced, right to left."""
    out = list(words)
    for c in sorted(chosen, key=lambda c: -c.start):
        out[c.start : c.end] = [swap(words, c.start, c.end, c.term)]
    return " ".join(out)


@torch.inference_mode()
def sequence_scores(base, states: torch.Tensor, prefix: Sequence[int], rows: Sequence[Sequence[int]]) -> list[float]:
    """Sum of log-probs of each token row (then end-of-text) after ``prefix``, teacher-forced on one
    window's encoder ``states`` (1 x frames x dim): the prefix (prompt + task tokens) and the cross-attention
    keys go through the decoder once, then every row in one batch from that cache; tokens ``generate``
    suppresses are masked out as in decoding."""
    gen = base.generation_config
    decoder, eot, device = base.model.decoder, gen.eos_token_id, states.device
    n, lead = len(rows), len(prefix)
    head = decoder(input_ids=torch.tensor([list(prefix)], device=device), encoder_hidden_states=states, use_cache=True)
    cache = head.cache
    cache.batch_repeat_interleave(n)
    seqs = [[*row, eot] for row in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((n, width), eot, dtype=torch.long, device=device)
    mask = torch.zeros((n, lead + width), dtype=torch.long, device=device)
    mask[:, :lead] = 1
    for r, seq in enumerate(seqs):
        ids[r, : len(seq)] = torch.tensor(seq, device=device)
        mask[r, lead : lead + len(seq)] = 1
    positions = torch.arange(lead, lead + width, device=device)[None].expand(n, -1)
    body = decoder(
        input_ids=ids,
        attention_mask=mask,
        encoder_hidden_states=states.expand(n, -1, -1),
        cache=cache,
        position_ids=positions,
        use_cache=True,
    ).last_hidden_state
    hidden = torch.cat([head.last_hidden_state[:, -1:].expand(n, -1, -1), body[:, :-1]], 1)  # each predicts ids[:, t]
    logits = base.proj_out(hidden).float()
    suppress, begin = list(gen.suppress_tokens or []), list(gen.begin_suppress_tokens or [])
    if suppress:
        logits[..., suppress] = float("-inf")
    if begin:
        logits[:, 0, begin] = float("-inf")  # as greedy_decode and generate do at the first step
    logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    keep = mask[:, lead:].bool()
    return torch.where(keep, logp, torch.zeros_like(logp)).sum(-1).tolist()


def rescore(base, tokenizer, states: torch.Tensor, prefix: Sequence[int], text: str, terms: Sequence[str], config):
    """(transcript, substitutions) of one window: ``text`` with the near-miss spans the model accepts
    (``config``: boost.py's ``BoostConfig``) replaced by terms; each substitution as
    ``{"from": span, "to": term, "gain": log-prob gain with the bonus}``."""
    found = candidates(text, terms, config.rescore_max_distance, config.rescore_max_words, config.rescore_max_candidates)
    if not found:
        return text, []

    def encode(t: str) -> list[int]:
        return tokenizer.encode(" " + t, add_special_tokens=False)

    scores = sequence_scores(base, states, prefix, [encode(text), *(encode(c.text) for c in found)])
    bonus = config.rescore_bonus
    gains = sorted(((s - scores[0] + bonus, c) for s, c in zip(scores[1:], found)), key=lambda g: -g[0])
    chosen: list[tuple[float, Candidate]] = []
    for gain, cand in gains:
        if gain > 0 and all(cand.end <= c.start or cand.start >= c.end for _g, c in chosen):
            chosen.append((gain, cand))
    if not chosen:
        return text, []
    words = text.split()
    best = chosen[0][1].text
    if len(chosen) > 1:
        joint = combine(words, [c for _g, c in chosen])
        if sequence_scores(base, states, prefix, [encode(joint)])[0] + bonus * len(chosen) > scores[0]:
            best = joint
        else:
            chosen = chosen[:1]
    subs = [{"from": " ".join(words[c.start : c.end]), "to": c.term, "gain": round(g, 3)} for g, c in chosen]
    return best, subs
