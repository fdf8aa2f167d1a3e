"""A cosine-similarity index over unit vectors: add, top-k search, save and load.

The index stores vectors (safetensors) and one JSON record per item; it does not own
an embedder, so the same index serves text passages, speech terms and images. Exact
search (a matrix product) is fast for the sizes mmadapt adapts with (10^2–10^5 items).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmadapt.errors import ArtifactError

VECTORS = "vectors.safetensors"
ITEMS = "items.json"


@dataclass
class Hit:
    id: str
    score: float
    item: dict[str, Any]


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-d (n, dim), got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class EmbeddingIndex:
    """Unit vectors + their items; ``search`` returns the top-k by cosine similarity."""

    def __init__(self, dim: int | None = None, meta: dict[str, Any] | None = None):
        self.dim = dim
        self.meta = dict(meta or {})
        self._vectors = np.zeros((0, dim or 0), dtype=np.float32)
        self._items: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(self._items)

    def add(self, vectors: np.ndarray, items: Sequence[dict[str, Any]]) -> None:
        """Add vectors with one item each (an item is a JSON-able dict with an ``id``)."""
        vectors = _normalise(vectors)
        if len(vectors) != len(items):
            raise ValueError(f"{len(vectors)} vectors for {len(items)} items")
        if self.dim is None or len(self._items) == 0:
            self.dim = vectors.shape[1]
            self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        if vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dim {vectors.shape[1]}, index has {self.dim}")
        for item in items:
            if "id" not in item:
                raise ValueError("every item needs an 'id'")
        self._vectors = np.concatenate([self._vectors, vectors], axis=0)
        self._items.extend(dict(item) for item in items)

    def search(self, queries: np.ndarray, k: int = 3) -> list[list[Hit]]:
        """For each query vector, the top-``k`` items by cosine similarity, best first."""
        queries = _normalise(queries)
        if not self._items:
            return [[] for _ in range(len(queries))]
        scores = queries @ self._vectors.T
        k = min(k, len(self._items))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [
            [Hit(self._items[j]["id"], float(scores[i, j]), self._items[j]) for j in row] for i, row in enumerate(top)
        ]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": torch.from_numpy(np.ascontiguousarray(self._vectors))}, str(folder / VECTORS))
        (folder / ITEMS).write_text(json.dumps({"dim": self.dim, "meta": self.meta, "items": self._items}, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> EmbeddingIndex:
        folder = Path(folder)
        try:
            record = json.loads((folder / ITEMS).read_text())
            vectors = load_file(str(folder / VECTORS))["vectors"].numpy()
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"cannot load index: {exc}", path=folder, fix="rebuild it with `mmadapt run`") from None
        index = cls(record["dim"], record.get("meta"))
        if len(vectors) != len(record["items"]):
            raise ArtifactError("index vectors and items differ in count", path=folder, fix="rebuild it")
        index._vectors = vectors.astype(np.float32)
        index._items = record["items"]
        return index
