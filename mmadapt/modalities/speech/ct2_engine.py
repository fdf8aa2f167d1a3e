"""Whisper decoding through CTranslate2 (``inference.engine: ctranslate2``), with mmadapt's windows and prefixes.

The same windows, decoder prompts, task prefixes and per-window token limits as the transformers
path (predict.py), decoded by ``ctranslate2.models.Whisper``: ``encode`` once per batch, then
``generate`` with one prefix per row from the encoder output (a retrieval second pass reuses it),
and ``detect_language`` for ``language: auto``. The CTranslate2 model is the stack's composed
model (a LoRA merged into a copy, the stack itself untouched) converted once per predictor by
ctranslate2's own converter (models/ct2_export.py) into a temporary folder, or a folder exported
with ``mmadapt export --format ct2``. Greedy transcripts are those of the transformers path (tested
on the tiny model: same tokens; ``compute_type`` int8 trades exactness for speed).

CTranslate2's Whisper bounds decoding by ``max_length``, which counts the prefix and is halved for
the sampled part (openai-whisper's ``n_text_ctx // 2``): a row may write at most
``min(max_length // 2, max_length - len(prefix) + 1)`` tokens, so ``max_length`` is chosen to allow the
batch's largest limit and each row is cut to its own limit, as the transformers path stops it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mmadapt.models.ct2_export import require_ctranslate2, write_ct2_whisper


def max_length_for(prefixes: Sequence[Sequence[int]], limit: int) -> int:
    """The ``max_length`` that lets every row write ``limit`` tokens after its prefix."""
    return max(2 * limit, limit + max(len(p) for p in prefixes) - 1)


class CT2Whisper:
    """A CTranslate2 Whisper folder, decoding windows as mmadapt's greedy decoder does."""

    def __init__(self, folder: str | Path, *, compute_type: str = "float32", threads: int = 0):
        ctranslate2 = require_ctranslate2()
        self.folder = Path(folder)
        self.model = ctranslate2.models.Whisper(str(self.folder), device="cpu", compute_type=compute_type, intra_threads=threads)
        self._storage = ctranslate2.StorageView

    def encode(self, features: np.ndarray) -> np.ndarray:
        """Encoder output (n, frames / 2, d_model) of log-mel ``features`` (n, mels, 3000)."""
        out = self.model.encode(self._storage.from_array(np.ascontiguousarray(features, dtype=np.float32)))
        return np.array(out)

    def detect(self, states: np.ndarray) -> list[str]:
        """The most likely language token (``<|xx|>``) of each window, from its encoder output."""
        results = self.model.detect_language(self._storage.from_array(np.ascontiguousarray(states)))
        return [pairs[0][0] for pairs in results]

    def generate(
        self, states: np.ndarray, prefixes: Sequence[Sequence[int]], limits: Sequence[int], num_beams: int = 1
    ) -> list[list[int]]:
        """Each row's continuation of its prefix (``<|endoftext|>`` dropped), cut to its limit."""
        if not len(prefixes):
            return []
        results = self.model.generate(
            self._storage.from_array(np.ascontiguousarray(states)),
            [list(p) for p in prefixes],
            beam_size=num_beams,
            max_length=max_length_for(prefixes, max(limits)),
        )
        return [list(r.sequences_ids[0])[:limit] for r, limit in zip(results, limits)]


def stack_ct2(stack, compute_type: str = "float32") -> CT2Whisper:
    """The stack's composed model (a LoRA merged into a copy) as a CTranslate2 model in a temporary folder
    that lives as long as the returned object."""
    from mmadapt.engine.export import merge_adapters

    plain, _merged = merge_adapters(copy.deepcopy(stack.model))
    holder = tempfile.TemporaryDirectory(prefix="mmadapt-ct2-")
    folder = write_ct2_whisper(plain, stack.processor, Path(holder.name) / "model")
    engine = CT2Whisper(folder, compute_type=compute_type)
    engine._holder = holder  # removed with the engine
    return engine
