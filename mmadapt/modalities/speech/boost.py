"""Vocabulary biasing at decode time: a token trie of the terms and a logits processor over it.

Shallow-fusion keyword boosting (as NeMo's phrase boosting does for CTC/RNN-T, here for Whisper's
decoder): every term is tokenized in the forms Whisper writes it — after a space (" Kubelyn") and
at the very start of a transcript ("Kubelyn"), as spelled and with a capital first letter — and
the token sequences go into a prefix tree. At each decoding step a row's generated tokens are
matched against the tree: where its last tokens spell the beginning of a term, the tokens that
continue the term get ``weight`` added to their log-probability; the first token of every term gets
``first_weight`` in greedy decoding and ``beam_first_weight`` in beam search (defaults 0: a term is
only pushed on once the audio has started it). In beam search a bonus is taken back when the path
leaves a term before its end (k2/icefall's ContextGraph does the same), so only finished terms keep
theirs. Forms without the leading space only match at the start of the transcript, so a term is
never glued inside a word.

The processor keeps no state between steps (it re-reads each row's tokens, which are short), so the
same object serves our batched greedy decoder (one trie per row) and ``generate``'s beam search
(``LogitsProcessor`` protocol: rows are batch x beams). We write this rather than use a library:
transformers has no phrase boosting (``SequenceBiasLogitsProcessor`` biases whole sequences by a
constant per token, not "continue a started term"), and faster-whisper's ``hotwords`` is prompt text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from mmadapt.config import StrictModel

END = -1  # trie key: a term ends at this node


class BoostConfig(StrictModel):
    """`boost:` of the speech `prompt` and `retrieval` strategies (absent: no biasing)."""

    weight: float = Field(4.0, ge=0.0, le=50.0, description="log-prob added to a started term's next token")
    first_weight: float = Field(0.0, ge=0.0, le=50.0, description="greedy: log-prob added to every term's first token")
    beam_first_weight: float = Field(
        0.0, ge=0.0, le=50.0, description="beam search: log-prob added to a term's first token, taken back if the term is not finished"
    )
    max_terms: int = Field(100, ge=1, le=5000, description="terms boosted per utterance (first in prompt/retrieval order)")
    min_logprob: float = Field(-6.0, le=0.0, description="boost a token only where the model's own log-prob is at least this")
    with_prompt: bool = Field(True, description="prompt strategy: also put the terms in the decoder prompt (false: boost alone)")
    min_prefix_chars: int = Field(
        3, ge=0, le=20, description="push a term on only once this many of its characters are decoded (one letter is not a start)"
    )
    rescore: bool = Field(
        False, description="after decoding, swap near-miss spans for terms where the model's own score agrees (rescore.py)"
    )
    rescore_bonus: float = Field(2.0, ge=0.0, le=50.0, description="rescore: log-prob credited per substituted term")
    rescore_max_distance: float = Field(
        0.5, ge=0.0, le=1.0, description="rescore: largest normalised edit distance (lowercase letters) from a span to a term"
    )
    rescore_max_words: int = Field(3, ge=1, le=6, description="rescore: a span of up to this many words may become one term")
    rescore_max_candidates: int = Field(
        16, ge=1, le=256, description="rescore: candidate transcripts scored per window, nearest first"
    )


class TermTrie:
    """Token sequences of terms (nested dicts token -> node); ``spaced`` match anywhere, ``bare`` only at the start."""

    def __init__(self, tokenizer, terms: Sequence[str], min_prefix_chars: int = 0):
        self.min_chars = min_prefix_chars
        self.spaced: dict = {}
        self.bare: dict = {}
        self.depth = 0
        for term in terms:
            term = term.strip()
            if not term:
                continue
            forms = dict.fromkeys([term, term[0].upper() + term[1:]])
            for form in forms:
                self._add(self.spaced, tokenizer.encode(" " + form, add_special_tokens=False), tokenizer)
                self._add(self.bare, tokenizer.encode(form, add_special_tokens=False), tokenizer)

    def _add(self, root: dict, ids: list[int], tokenizer) -> None:
        node = root
        for n, token in enumerate(ids):
            # a node's key None: the term's characters decoded up to here (its continuations wait for min_prefix_chars)
            node = node.setdefault(int(token), {None: len(tokenizer.decode(ids[: n + 1]).strip())})
        if ids:
            node[END] = True  # a whole term ends here
        self.depth = max(self.depth, len(ids))

    def next_tokens(self, generated: Sequence[int]) -> tuple[set[int], set[int]]:
        """(tokens that continue a term begun by the last generated tokens, first tokens of terms)."""
        cont, first, _open = self.match(generated)
        return cont, first

    def match(self, generated: Sequence[int]) -> tuple[set[int], set[int], int]:
        """``next_tokens`` plus where the longest unfinished term match begins (-1: none): the tokens
        from there on are a term's start that has not reached a term's end (beam search takes its
        bonus back if the next token leaves the term)."""
        cont: set[int] = set()
        opened = -1
        n = len(generated)
        for start in range(max(0, n - self.depth), n):
            for root in (self.spaced, self.bare) if start == 0 else (self.spaced,):
                node = root
                for token in generated[start:]:
                    node = node.get(token)
                    if node is None:
                        break
                if not node:
                    continue
                if node[None] >= self.min_chars:
                    cont.update(k for k in node if k is not None and k != END)
                if opened < 0 and END not in node:
                    opened = start
        first = {k for k in self.spaced if k is not None} | ({k for k in self.bare} if n == 0 else set())
        return cont, first, opened


class VocabularyBoost:
    """A logits processor: ``tries[r // beams]`` biases row ``r``; tokens after the last ``marker``
    (``<|notimestamps|>``) count as generated (``generate`` passes the whole decoder input).

    ``take_back`` (beam search): every bonus given is remembered (keyed by the token path it led to);
    a row whose last tokens are an unfinished term start gets the bonus of that start taken back on
    every token that leaves the term (end of text included), as k2/icefall's ContextGraph does, so a
    beam only keeps a term's bonus by finishing the term. Greedy decoding cannot take back a token,
    so there the start of a term gets ``first_weight`` and is never undone."""

    def __init__(
        self, tries: Sequence[TermTrie | None], config: BoostConfig, *, beams: int = 1, marker: int | None = None,
        take_back: bool = False,
    ):
        self.tries = list(tries)
        self.config = config
        self.beams = beams
        self.marker = marker
        self.take_back = take_back
        self.given: dict[tuple[int, ...], float] = {}  # token path -> bonus its last token got

    def _generated(self, row: list[int]) -> list[int]:
        if self.marker is not None and self.marker in row:
            return row[len(row) - row[::-1].index(self.marker) :]
        return row

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        cfg = self.config
        first_weight = cfg.beam_first_weight if self.take_back else cfg.first_weight
        logprobs = torch.log_softmax(scores.float(), dim=-1)
        bonus = torch.zeros_like(scores)
        rows = input_ids.tolist()
        for r, row in enumerate(rows):
            trie = self.tries[r // self.beams]
            if trie is None:
                continue
            generated = self._generated(row)
            cont, first, opened = trie.match(generated)
            for tokens, weight in ((first, first_weight), (cont, cfg.weight)):
                if weight and tokens:
                    idx = torch.tensor(sorted(tokens), device=scores.device)
                    idx = idx[logprobs[r, idx] >= cfg.min_logprob]
                    bonus[r, idx] = torch.maximum(bonus[r, idx], torch.full_like(bonus[r, idx], weight))
            if not self.take_back:
                continue
            for token in bonus[r].gt(0).nonzero()[:, 0].tolist():
                self.given[(*generated, token)] = float(bonus[r, token])
            if opened >= 0:  # an unfinished term: leaving it costs what it was given
                owed = sum(self.given.get(tuple(generated[: i + 1]), 0.0) for i in range(opened, len(generated)))
                if owed:
                    keep = bonus[r].clone()
                    bonus[r] -= owed
                    if cont:
                        stay = torch.tensor(sorted(cont), device=scores.device)
                        bonus[r, stay] = keep[stay]
        return scores + bonus


def boost_processor(stack, terms_per_row: Sequence[Sequence[str] | None], *, beams: int = 1, marker: int | None = None):
    """The processor for these rows under the stack's ``boost`` settings, or None when nothing is boosted."""
    config = stack.boost
    if config is None or not any(terms_per_row):
        return None
    tok = stack.processor.tokenizer
    cache: dict[tuple[str, ...], TermTrie] = {}
    tries = []
    for terms in terms_per_row:
        key = tuple(terms or ())[: config.max_terms]
        if key and key not in cache:
            cache[key] = TermTrie(tok, key, config.min_prefix_chars)
        tries.append(cache.get(key))
    return VocabularyBoost(tries, config, beams=beams, marker=marker, take_back=beams > 1)
