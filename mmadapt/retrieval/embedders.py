"""Embedders that turn items into vectors for :class:`~mmadapt.retrieval.index.EmbeddingIndex`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from mmadapt.models.resolve import load_error, resolve_model


class Embedder(Protocol):
    ref: str

    def encode(self, items: Sequence[str], *, batch_size: int = 32) -> np.ndarray: ...


class SentenceEmbedder:
    """A sentence-transformers text embedder (default: ``embedded:minilm-l6``)."""

    def __init__(self, ref: str = "embedded:minilm-l6", device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.ref = ref
        location = resolve_model(ref)
        try:
            self.model = SentenceTransformer(location, device=device)
        except Exception as exc:  # noqa: BLE001 - every loader failure becomes one clear line
            raise load_error(ref, exc) from None

    def encode(self, items: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        if not items:
            return np.zeros((0, self.model.get_sentence_embedding_dimension()), dtype=np.float32)
        vectors = self.model.encode(
            list(items), batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
        return vectors.astype(np.float32)


@lru_cache(maxsize=4)
def load_embedder(ref: str = "embedded:minilm-l6") -> SentenceEmbedder:
    """A cached text embedder for ``ref`` (loading one takes about a second)."""
    return SentenceEmbedder(ref)
