"""The embedding index shared by every modality (text passages, vocabulary terms, images)."""

from mmadapt.retrieval.embedders import Embedder, SentenceEmbedder, load_embedder
from mmadapt.retrieval.index import EmbeddingIndex, Hit

__all__ = ["EmbeddingIndex", "Hit", "Embedder", "SentenceEmbedder", "load_embedder"]
