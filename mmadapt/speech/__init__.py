"""The speech modality: Whisper adapted to a domain vocabulary by prompt, retrieval, LoRA or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from mmadapt.core.strategy import DataBundle, Example, Modality, Prediction, StrictModel
from mmadapt.evaluation import speech as speech_metrics
from mmadapt.speech.adapter import SpeechAdapterStrategy
from mmadapt.speech.data import read_audiofolder, read_vocabulary
from mmadapt.speech.full import SpeechFullStrategy
from mmadapt.speech.model import SpeechStack, load_whisper
from mmadapt.speech.prompt import SpeechPromptStrategy
from mmadapt.speech.retrieval import SpeechRetrievalStrategy
from mmadapt.speech.transcribe import SpeechInference, SpeechPredictor
from mmadapt.text.data import fingerprint

METRICS = ("wer", "cer", "b_wer", "u_wer", "term_recall", "term_precision", "mean_wer", "median_wer")


class SpeechData(StrictModel):
    train: str | None = Field(None, description="audiofolder: metadata.jsonl (file_name, transcription, terms?) + audio")
    eval: str = Field(description="audiofolder of held-out utterances")
    vocabulary: str | None = Field(None, description="domain terms, one per line")


class SpeechModality(Modality):
    name = "speech"
    strategies = {
        "prompt": SpeechPromptStrategy,
        "retrieval": SpeechRetrievalStrategy,
        "adapter": SpeechAdapterStrategy,
        "full": SpeechFullStrategy,
    }
    inference_model = SpeechInference
    data_model = SpeechData
    metrics = METRICS
    default_metrics = ("wer", "b_wer", "u_wer", "term_recall", "term_precision", "cer", "median_wer")
    primary_metric = "b_wer"
    lower_is_better = frozenset({"wer", "cer", "b_wer", "u_wer", "mean_wer", "median_wer"})

    def load_data(self, recipe) -> DataBundle:
        d = recipe.data
        train = read_audiofolder(recipe.path(d.train), "train") if d.train else []
        evaluation = read_audiofolder(recipe.path(d.eval), "eval")
        vocabulary = read_vocabulary(recipe.path(d.vocabulary)) if d.vocabulary else []
        paths = [recipe.path(p) for p in (d.train, d.eval, d.vocabulary) if p]
        digest, files = fingerprint([Path(p) for p in paths])
        return DataBundle(train, evaluation, {"vocabulary": vocabulary}, digest, files)

    def new_stack(self, recipe) -> SpeechStack:
        model, processor, info = load_whisper(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
        vocabulary = read_vocabulary(recipe.path(recipe.data.vocabulary)) if recipe.data.vocabulary else []
        return SpeechStack(recipe, model, processor, info, vocabulary)

    def predictor(self, stack: SpeechStack) -> SpeechPredictor:
        return SpeechPredictor(stack)

    def score(self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle) -> list[dict[str, Any]]:
        terms = data.resources.get("vocabulary", [])
        rows = []
        for pred, ex in zip(predictions, examples):
            row = speech_metrics.score_utterance(ex.reference, pred.output, terms, id=ex.id)
            row["prompt_terms"] = pred.sources
            rows.append(row)
        return rows

    def aggregate(self, rows: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
        corpus = speech_metrics.aggregate(rows)
        return {m: corpus[m] for m in metrics if corpus.get(m) is not None}
