"""The speech modality's own recipe sections: ``data:`` and ``inference:`` (each strategy's settings
live beside the strategy: prompt.py, retrieval.py, adapter.py, full.py)."""

from __future__ import annotations

from pydantic import Field

from mmadapt.config import StrictModel
from mmadapt.modalities.speech.fallback import FallbackConfig


class SpeechData(StrictModel):
    train: str | None = Field(None, description="audiofolder: metadata.jsonl (file_name, transcription, terms?) + audio")
    eval: str = Field(description="audiofolder of held-out utterances")
    vocabulary: str | None = Field(None, description="domain terms, one per line")


class SpeechInference(StrictModel):
    max_new_tokens: int = Field(96, ge=1, le=440, description="per 30 s window; bounds tiny models' repetition loops")
    tokens_per_second: float = Field(
        6.0, ge=0.0, le=100.0, description="also cap new tokens at this x the window's seconds + 8 (0: no cap)"
    )
    batch_size: int = Field(8, ge=1, le=256, description="windows per encoder/decoder batch")
    num_beams: int = Field(1, ge=1, le=16, description="1 = greedy (batched, mixed prompts); > 1 = beam search via generate")
    chunk_seconds: float = Field(30.0, gt=1.0, le=30.0)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig, description="temperature fallback (fallback.py)")
