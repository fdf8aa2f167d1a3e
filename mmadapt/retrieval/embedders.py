"""Embedders that turn items into vectors for :class:`~mmadapt.retrieval.index.EmbeddingIndex`."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import numpy as np

from mmadapt.models.quiet import quiet_libraries
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
            with quiet_libraries():
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


_SOUND_RULES = (("ph", "f"), ("ck", "k"), ("qu", "kw"), ("q", "k"), ("c", "k"), ("x", "ks"), ("z", "s"), ("y", "i"), ("w", "u"))
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def sound_key(text: str) -> str:
    """A rough phonetic spelling: lower case, digits as words, similar-sounding letters merged,
    doubled letters collapsed, no spaces ("QPX-9" -> "kpksnine", "Kubelyn" ~ "Cube Lynn")."""
    import re

    text = text.lower()
    text = re.sub(r"\d", lambda m: _DIGITS[int(m.group())], text)
    text = re.sub(r"[^a-z]", "", text)
    for old, new in _SOUND_RULES:
        text = text.replace(old, new)
    return re.sub(r"(.)\1+", r"\1", text)


class SoundEmbedder:
    """Hashed character 2- and 3-grams of :func:`sound_key`: a spelling-and-sound embedder for
    matching a first-pass transcript against domain terms (no learned weights)."""

    ref = "sound-ngrams"

    def __init__(self, dim: int = 2048):
        self.dim = dim

    def encode(self, items: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        import zlib

        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for row, item in enumerate(items):
            key = f"^{sound_key(item)}$"
            for n in (2, 3):
                for i in range(len(key) - n + 1):
                    out[row, zlib.crc32(key[i : i + n].encode()) % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
