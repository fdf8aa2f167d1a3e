"""The embedding index: top-k cosine search, save/load, dimension checks, and the real MiniLM embedder."""

from __future__ import annotations

import numpy as np
import pytest

from mmadapt.errors import ArtifactError
from mmadapt.retrieval import EmbeddingIndex

ITEMS = [{"id": "x"}, {"id": "y"}, {"id": "xy"}, {"id": "neg-x"}]
VECTORS = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [-1, 0, 0]], dtype=np.float32)


@pytest.fixture
def index():
    idx = EmbeddingIndex(meta={"embedder": "hand"})
    idx.add(VECTORS * np.array([[3], [0.5], [2], [7]], dtype=np.float32), ITEMS)  # scale does not matter: cosine
    return idx


def test_top_k_order_and_cosine_scores(index):
    hits = index.search(np.array([[1, 0.2, 0]], dtype=np.float32), k=3)[0]
    assert [h.id for h in hits] == ["x", "xy", "y"]
    expected = [1 / np.sqrt(1.04), 1.2 / (np.sqrt(1.04) * np.sqrt(2)), 0.2 / np.sqrt(1.04)]
    assert [h.score for h in hits] == pytest.approx(expected, abs=1e-6)
    assert hits[0].item == {"id": "x"}


def test_several_queries_and_k_larger_than_the_index(index):
    results = index.search(np.array([[0, 1, 0], [-1, 0, 0]], dtype=np.float32), k=10)
    assert len(results) == 2 and all(len(r) == 4 for r in results)
    assert results[0][0].id == "y" and results[1][0].id == "neg-x"
    assert results[1][-1].id == "x" and results[1][-1].score == pytest.approx(-1.0)


def test_empty_index_returns_no_hits():
    assert EmbeddingIndex().search(np.ones((2, 5), dtype=np.float32)) == [[], []]


def test_save_load_roundtrip(index, tmp_path):
    index.save(tmp_path / "idx")
    loaded = EmbeddingIndex.load(tmp_path / "idx")
    assert loaded.dim == 3 and loaded.meta == {"embedder": "hand"} and loaded.items == index.items
    np.testing.assert_array_equal(loaded._vectors, index._vectors)
    query = np.array([[0.3, 0.9, 0.1]], dtype=np.float32)
    assert [(h.id, h.score) for h in loaded.search(query, 4)[0]] == [(h.id, h.score) for h in index.search(query, 4)[0]]
    assert list((tmp_path / "idx").iterdir()) and not list((tmp_path / "idx").glob("*.pkl"))


def test_load_errors(tmp_path, index):
    with pytest.raises(ArtifactError, match="cannot load index"):
        EmbeddingIndex.load(tmp_path / "missing")
    index.save(tmp_path / "idx")
    items = tmp_path / "idx" / "items.json"
    items.write_text(items.read_text().replace('"id": "x"', '"id": "x"}, {"id": "extra"', 1))
    with pytest.raises(ArtifactError, match="differ in count"):
        EmbeddingIndex.load(tmp_path / "idx")


def test_dim_mismatch_and_bad_input(index):
    with pytest.raises(ValueError, match="vectors have dim 4, index has 3"):
        index.add(np.ones((1, 4), dtype=np.float32), [{"id": "z"}])
    with pytest.raises(ValueError, match="2 vectors for 1 items"):
        index.add(np.ones((2, 3), dtype=np.float32), [{"id": "z"}])
    with pytest.raises(ValueError, match="needs an 'id'"):
        index.add(np.ones((1, 3), dtype=np.float32), [{"text": "no id"}])
    with pytest.raises(ValueError, match="2-d"):
        index.add(np.ones(3, dtype=np.float32), [{"id": "z"}])
    with pytest.raises(ValueError):
        index.search(np.ones((1, 4), dtype=np.float32))
    assert len(index) == 4  # failed adds changed nothing


PASSAGES = {
    "ports": "The Zentrix gateway listens on TCP port 7443 for encrypted traffic.",
    "pricing": "The Pro plan costs 149 dollars per month, billed yearly.",
    "backup": "Nightly backups are kept for 30 days in cold storage.",
    "weather": "Rain is expected in the mountains over the weekend.",
}
QUERIES = {
    "Which port does the gateway use?": "ports",
    "How much is the Pro subscription?": "pricing",
    "How long are backups retained?": "backup",
}


@pytest.mark.slow  # loading sentence-transformers and MiniLM takes well over 3 s on the 2-core CI machine
def test_minilm_ranks_the_right_passage_first():
    from mmadapt.retrieval import load_embedder

    embedder = load_embedder("embedded:minilm-l6")
    index = EmbeddingIndex()
    index.add(embedder.encode(list(PASSAGES.values())), [{"id": k} for k in PASSAGES])
    assert index.dim == 384
    hits = index.search(embedder.encode(list(QUERIES)), k=2)
    assert [row[0].id for row in hits] == list(QUERIES.values())
    assert all(row[0].score > row[1].score for row in hits)
    assert embedder.encode([]).shape == (0, 384)
