"""The speech modality's own recipe sections: ``data:`` and ``inference:`` (each strategy's settings
live beside the strategy: prompt.py, retrieval.py, adapter.py, full.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

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
    language: str = Field(
        "auto", description="multilingual checkpoints: a Whisper language code (en, fr, ...) or auto (detected per window)"
    )
    task: Literal["transcribe", "translate"] = Field(
        "transcribe", description="multilingual checkpoints: translate = into English"
    )

    engine: Literal["transformers", "ctranslate2"] = Field(
        "transformers",
        description="ctranslate2: decode through CTranslate2 (pip install 'mmadapt[ct2]'), same greedy transcripts",
    )
    compute_type: Literal["float32", "int8"] = Field(
        "float32", description="ctranslate2 only: int8 quantises the weights at load (faster, transcripts may differ)"
    )

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        from mmadapt.modalities.speech.language import language_code

        return language_code(value)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig, description="temperature fallback (fallback.py)")
