"""The text modality: causal LLMs adapted by prompt, retrieval (RAG), adapters or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapt.modalities.text import data as text_data
from mmadapt.modalities.text.adapter import TextAdapterStrategy
from mmadapt.modalities.text.config import TextData, TextInference
from mmadapt.modalities.text.full import TextFullStrategy
from mmadapt.modalities.text.metrics import METRICS, score_text
from mmadapt.modalities.text.model import TextStack, load_causal_lm
from mmadapt.modalities.text.predict import TextPredictor
from mmadapt.modalities.text.prompt import TextPromptStrategy
from mmadapt.modalities.text.retrieval import TextRetrievalStrategy
from mmadapt.protocols import DataBundle, Example, Modality, Prediction


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
    lower_is_better = frozenset()
    input_keys = ("question", "input", "text")

    def load_data(self, recipe) -> DataBundle:
        return text_data.load_data(recipe)

    def validate_data(self, recipe) -> list:
        """All problems of the Q/A splits and the knowledge base, each with file and line (see engine/validate.py)."""
        return text_data.validate_data(recipe)

    def new_stack(self, recipe) -> TextStack:
        model, tokenizer, info = load_causal_lm(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
        return TextStack(recipe, model, tokenizer, info)

    def predictor(self, stack: TextStack) -> TextPredictor:
        return TextPredictor(stack)

    def export_model(self, stack: TextStack, out_dir: Path) -> list[str]:
        from mmadapt.engine.export import save_model_folder

        return save_model_folder(stack.model, out_dir, stack.tokenizer)

    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        rows = []
        for pred, ex in zip(predictions, examples):
            row = {"id": ex.id, "question": ex.input, "answer": pred.output, "reference": ex.reference}
            row.update(score_text(pred.output, ex.reference, ex.meta.get("key_fact"), metrics))
            rows.append(row)
        return rows

    def retrieval_source(self, recipe) -> str | None:
        return recipe.data.knowledge

    def drift_texts(self, examples: Sequence[Example]) -> list[str]:
        return [str(e.input) for e in examples]

    def drift_terms(self, data: DataBundle) -> list[str]:
        return []

    def drift_embedder(self, recipe) -> str | None:
        section = recipe.strategies.get("retrieval") or recipe.compare_strategies.get("retrieval")
        return section.embedder if section is not None else None

    def output_json(self, output: Any, index: int, files_dir: Path) -> Any:
        return output

    def show(self, input: Any, prediction: Prediction) -> str:
        lines = [f"Q: {input}", f"A: {prediction.output}"]
        if prediction.sources:
            lines.append(f"   sources: {', '.join(prediction.sources)}")
        return "\n".join(lines)
