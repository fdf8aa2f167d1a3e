"""The text modality's own recipe sections: ``data:`` and ``inference:`` (each strategy's settings
live beside the strategy: prompt.py, retrieval.py, adapter.py, full.py)."""

from __future__ import annotations

from pydantic import Field

from mmadapt.config import StrictModel


class TextData(StrictModel):
    train: str | None = Field(None, description="JSONL of {question, answer, key_fact?}")
    eval: str = Field(description="JSONL of held-out {question, answer, key_fact?}")
    knowledge: str | None = Field(None, description="folder of .md/.txt documents, or JSONL {id, text}")


class TextInference(StrictModel):
    max_new_tokens: int = Field(48, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=0.5, le=3.0)
    batch_size: int = Field(8, ge=1, le=1024)
