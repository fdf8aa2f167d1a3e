"""The text modality: causal LLMs adapted by prompt, retrieval (RAG), adapters or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from mmadapt.core.strategy import DataBundle, Example, Modality, Prediction, StrictModel
from mmadapt.evaluation.text import METRICS, score_text
from mmadapt.text.adapter import TextAdapterStrategy
from mmadapt.text.data import fingerprint, read_jsonl_split
from mmadapt.text.full import TextFullStrategy
from mmadapt.text.generate import TextInference, TextPredictor
from mmadapt.text.model import TextStack, load_causal_lm
from mmadapt.text.prompt import TextPromptStrategy
from mmadapt.text.retrieval import TextRetrievalStrategy


class TextData(StrictModel):
    train: str | None = Field(None, description="JSONL of {question, answer, key_fact?}")
    eval: str = Field(description="JSONL of held-out {question, answer, key_fact?}")
    knowledge: str | None = Field(None, description="folder of .md/.txt documents, or JSONL {id, text}")


class TextModality(Modality):
    name = "text"
    strategies = {
        "prompt": TextPromptStrategy,
        "retrieval": TextRetrievalStrategy,
        "adapter": TextAdapterStrategy,
        "full": TextFullStrategy,
    }
    inference_model = TextInference
    data_model = TextData
    metrics = METRICS
    default_metrics = ("fact_accuracy", "token_f1", "rouge_l")
    primary_metric = "fact_accuracy"

    def load_data(self, recipe) -> DataBundle:
        paths = [recipe.path(p) for p in (recipe.data.train, recipe.data.eval, recipe.data.knowledge) if p]
        train = read_jsonl_split(recipe.path(recipe.data.train), "train") if recipe.data.train else []
        evaluation = read_jsonl_split(recipe.path(recipe.data.eval), "eval")
        digest, files = fingerprint([Path(p) for p in paths])
        return DataBundle(train, evaluation, {}, digest, files)

    def new_stack(self, recipe) -> TextStack:
        model, tokenizer, info = load_causal_lm(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
        return TextStack(recipe, model, tokenizer, info)

    def predictor(self, stack: TextStack) -> TextPredictor:
        return TextPredictor(stack)

    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        rows = []
        for pred, ex in zip(predictions, examples):
            row = {"id": ex.id, "question": ex.input, "answer": pred.output, "reference": ex.reference}
            row.update(score_text(pred.output, ex.reference, ex.meta.get("key_fact"), metrics))
            rows.append(row)
        return rows
