"""The retrieval strategy for speech: per utterance, the vocabulary terms most likely spoken.

A first pass transcribes without (or with the static) prompt; every window of 1–3 words
of that hypothesis is matched against the vocabulary in the shared embedding index,
using a spelling-and-sound embedder (so "cube lynn" finds "Kubelyn"); the best-scoring
terms become that utterance's decoder prompt for a second pass. This scales to
vocabularies far larger than Whisper's prompt budget.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from mmadapt.config import StrictModel
from mmadapt.errors import DataError
from mmadapt.modalities.speech.boost import BoostConfig
from mmadapt.modalities.speech.predict import DEFAULT_TEMPLATE, check_vocabulary
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy
from mmadapt.retrieval import EmbeddingIndex
from mmadapt.retrieval.embedders import SoundEmbedder

CONFIG_FILE = "retrieval.json"


class SpeechRetrievalConfig(StrictModel):
    top_k: int = Field(6, ge=1, le=100, description="terms put in each utterance's prompt")
    min_score: float = Field(0.55, ge=0.0, le=1.0, description="cosine a window must reach to propose a term")
    max_window_words: int = Field(3, ge=1, le=6)
    template: str = Field(DEFAULT_TEMPLATE, max_length=2000)
    max_prompt_tokens: int = Field(200, ge=8, le=223)
    boost: BoostConfig | None = Field(None, description="bias the second pass towards its retrieved terms (boost.py)")


def term_index(terms: Sequence[str]) -> EmbeddingIndex:
    """The terms in the shared index, embedded by spelling and sound."""
    index = EmbeddingIndex(meta={"embedder": SoundEmbedder.ref})
    index.add(SoundEmbedder().encode(list(terms)), [{"id": f"term-{i}", "term": t} for i, t in enumerate(terms)])
    return index


class TermRetriever:
    def __init__(self, index: EmbeddingIndex, config: SpeechRetrievalConfig):
        self.index = index
        self.config = config
        self.embedder = SoundEmbedder()

    def windows(self, text: str) -> list[str]:
        words = re.findall(r"[A-Za-z0-9]+", text)
        out = []
        for n in range(1, self.config.max_window_words + 1):
            out.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        return out

    def for_terms(self, terms: Sequence[str]) -> TermRetriever:
        """The same settings over another vocabulary (a request's own)."""
        return TermRetriever(term_index(terms), self.config)

    def retrieve(self, hypotheses: Sequence[str]) -> list[list[str]]:
        chosen = []
        for text in hypotheses:
            windows = self.windows(text)
            if not windows:
                chosen.append([])
                continue
            best: dict[str, float] = {}
            for row in self.index.search(self.embedder.encode(windows), k=3):
                for hit in row:
                    if hit.score >= self.config.min_score:
                        best[hit.item["term"]] = max(best.get(hit.item["term"], 0.0), hit.score)
            ranked = sorted(best, key=lambda t: -best[t])[: self.config.top_k]
            chosen.append(ranked)
        return chosen


class SpeechRetrievalStrategy(Strategy):
    name = "retrieval"
    config_model = SpeechRetrievalConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        if not stack.vocabulary:
            raise DataError("the retrieval strategy needs a vocabulary", path=self.recipe.source, fix="set data.vocabulary")
        if stack.prompt_terms is None:  # the template and budget compose() sets: no term may overflow them alone
            stack.prompt_template, stack.max_prompt_tokens = self.config.template, self.config.max_prompt_tokens
        check_vocabulary(stack, stack.vocabulary, self.recipe.path(self.recipe.data.vocabulary))
        index = term_index(stack.vocabulary)
        index.save(part_dir / "index")
        (part_dir / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        config = SpeechRetrievalConfig.model_validate_json((part_dir / CONFIG_FILE).read_text())
        stack.retriever = TermRetriever(EmbeddingIndex.load(part_dir / "index"), config)
        if stack.prompt_terms is None:
            stack.prompt_template = config.template
            stack.max_prompt_tokens = config.max_prompt_tokens
        if config.boost is not None:
            stack.boost = config.boost
            stack.boost_passes.add("retrieved")
