"""The text modality's own recipe sections: ``data:`` and ``inference:`` (each strategy's settings
live beside the strategy: prompt.py, retrieval.py, adapter.py, full.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from mmadapt.config import StrictModel

DATASET = {"kind": "dataset"}  # a file, a `save_to_disk` folder, or a hub id (recipe.py checks it exists unless it is one)
SETTING = {"kind": "setting"}  # a string that is not a path


class TextData(StrictModel):
    train: str | None = Field(
        None,
        description="JSONL/JSON/CSV/Parquet file, a datasets save_to_disk folder, or a hub id owner/name[:split]",
        json_schema_extra=DATASET,
    )
    eval: str = Field(description="held-out split, same forms as train (one example per assistant turn)", json_schema_extra=DATASET)
    knowledge: str | None = Field(None, description="folder of .md/.txt documents, or JSONL {id, text}")
    format: Literal["auto", "qa", "messages", "sharegpt", "alpaca"] = Field(
        "auto",
        description="auto: from the first record's fields (question -> qa, messages, conversations -> sharegpt, instruction -> alpaca)",
        json_schema_extra=SETTING,
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="our field name -> yours, e.g. {question: prompt, answer: response} or {messages: dialog, role: speaker}",
    )
    chat_template: str | None = Field(
        None,
        max_length=100_000,
        description="a Jinja chat template (or a .jinja file) replacing the tokenizer's, for training and inference",
        json_schema_extra=SETTING,
    )
    fallback_chat_template: str | None = Field(
        None,
        max_length=100_000,
        description="a Jinja chat template (or a .jinja file) used only when the model has none (a base model)",
        json_schema_extra=SETTING,
    )


class TextInference(StrictModel):
    max_new_tokens: int = Field(48, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, ge=0.5, le=3.0)
    batch_size: int = Field(8, ge=1, le=1024)
