"""The retrieval strategy for text (RAG): index the knowledge base, put top-k passages in the prompt."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, field_validator

from mmadapt.config import StrictModel
from mmadapt.errors import DataError
from mmadapt.modalities.text.data import read_knowledge
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy
from mmadapt.retrieval import EmbeddingIndex, load_embedder

CONFIG_FILE = "retrieval.json"


class RetrievalConfig(StrictModel):
    embedder: str = Field("embedded:minilm-l6", description="sentence-transformers model reference")
    top_k: int = Field(3, ge=1, le=50)
    chunk_words: int = Field(120, ge=8, le=4000, description="passage length in words")
    history_turns: int = Field(
        0, ge=0, le=64, description="a conversation's query: its last user turn after this many turns before it"
    )
    context_template: str = Field(
        "Answer the question using the context.\n\nContext:\n{context}\n\n{question}", max_length=20_000
    )

    @field_validator("context_template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        if "{context}" not in value or "{question}" not in value:
            raise ValueError("context_template must contain {context} and {question}")
        return value


class Retriever:
    """Embeds questions and returns the top-k passages of the index."""

    def __init__(self, index: EmbeddingIndex, embedder_ref: str, top_k: int, history_turns: int = 0):
        self.index = index
        self.history_turns = history_turns
        self.embedder = load_embedder(embedder_ref)
        self.top_k = top_k

    def retrieve(self, questions: Sequence[str]) -> list[list[dict]]:
        hits = self.index.search(self.embedder.encode(list(questions)), self.top_k)
        return [[{**h.item, "score": round(h.score, 4)} for h in row] for row in hits]


def passage_text(item: dict) -> str:
    return f"[{item['title']}] {item['text']}" if item.get("title") else item["text"]


class TextRetrievalStrategy(Strategy):
    name = "retrieval"
    config_model = RetrievalConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        kb = self.recipe.path(self.recipe.data.knowledge)
        if kb is None:
            raise DataError(
                "the retrieval strategy needs a knowledge base", path=self.recipe.source, fix="set data.knowledge"
            )
        passages = read_knowledge(kb, self.config.chunk_words)
        embedder = load_embedder(self.config.embedder)
        vectors = embedder.encode([f"{p.title}. {p.text}" for p in passages])
        index = EmbeddingIndex(meta={"embedder": self.config.embedder})
        index.add(vectors, [{"id": p.id, "source": p.source, "title": p.title, "text": p.text} for p in passages])
        index.save(part_dir / "index")
        (part_dir / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        config = RetrievalConfig.model_validate_json((part_dir / CONFIG_FILE).read_text())
        stack.retriever = Retriever(EmbeddingIndex.load(part_dir / "index"), config.embedder, config.top_k, config.history_turns)
        stack.context_template = config.context_template
