"""The speech modality: Whisper adapted to a domain vocabulary by prompt, retrieval, LoRA or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapt.errors import DataError, RequestError
from mmadapt.modalities.speech import data as speech_data
from mmadapt.modalities.speech import metrics as speech_metrics
from mmadapt.modalities.speech.adapter import SpeechAdapterStrategy
from mmadapt.modalities.speech.config import SpeechData, SpeechInference
from mmadapt.modalities.speech.data import read_vocabulary
from mmadapt.modalities.speech.full import SpeechFullStrategy
from mmadapt.modalities.speech.model import SpeechStack, load_whisper
from mmadapt.modalities.speech.predict import SpeechPredictor, SpeechRequest
from mmadapt.modalities.speech.prompt import SpeechPromptStrategy
from mmadapt.modalities.speech.retrieval import SpeechRetrievalStrategy
from mmadapt.protocols import DataBundle, Example, GuardSurface, Modality, Prediction, ServeRequest, Stack

METRICS = ("wer", "cer", "b_wer", "u_wer", "term_recall", "term_precision", "mean_wer", "median_wer",
           "false_terms", "false_alarm_rate", "style")


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
    lower_is_better = frozenset({"wer", "cer", "b_wer", "u_wer", "mean_wer", "median_wer", "false_terms", "false_alarm_rate", "style"})
    input_keys = ("audio", "file_name", "path", "input")
    option_keys = ("vocabulary",)
    api_endpoint = "audio.transcriptions"
    guard_surface = GuardSurface(words="output", output_text=True, escalation=False)  # the transcript is the user's words

    def guard_output(self, message: str, stack: Stack) -> str:
        return message

    def load_data(self, recipe) -> DataBundle:
        return speech_data.load_data(recipe)

    def validate_data(self, recipe) -> list:
        """All problems of the audiofolder splits and the vocabulary, each with file and line (see engine/validate.py)."""
        return speech_data.validate_data(recipe)

    def new_stack(self, recipe) -> SpeechStack:
        model, processor, info = load_whisper(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
        vocabulary = read_vocabulary(recipe.path(recipe.data.vocabulary)) if recipe.data.vocabulary else []
        return SpeechStack(recipe, model, processor, info, vocabulary)

    def base_key(self, recipe) -> tuple | None:
        return None if "full" in recipe.stack else ("speech", recipe.base_model, recipe.trust_remote_code)

    def share_stack(self, recipe, base: SpeechStack | None) -> SpeechStack:
        from mmadapt.engine.shared import SharedBase

        if base is None:
            stack = self.new_stack(recipe)
            stack.shared = SharedBase(stack.model)
            return stack
        vocabulary = read_vocabulary(recipe.path(recipe.data.vocabulary)) if recipe.data.vocabulary else []
        stack = SpeechStack(recipe, base.shared.model, base.processor, base.base_info, vocabulary)
        stack.shared = base.shared
        return stack

    def predictor(self, stack: SpeechStack) -> SpeechPredictor:
        return SpeechPredictor(stack)

    export_formats = ("transformers", "ct2")

    def request_input(self, input: Any, options: dict[str, Any], source: str) -> Any:
        """A clip with its own ``vocabulary``: a list of terms, or a vocabulary file (one term a line;
        a relative path is read from the current folder). No options: the path unchanged."""
        unknown = sorted(set(options) - set(self.option_keys))
        if unknown:
            raise RequestError(f"{', '.join(unknown)}: not an option of speech inputs", fix="options: vocabulary")
        vocabulary = options.get("vocabulary")
        if vocabulary is None:
            return input
        if isinstance(vocabulary, str):
            terms = read_vocabulary(Path(vocabulary))
        elif isinstance(vocabulary, list) and all(isinstance(t, str) for t in vocabulary):
            terms = [t.strip() for t in vocabulary if t.strip()]
        else:
            raise DataError("vocabulary must be a list of terms or a file path", path=source, fix='e.g. "vocabulary": ["Zentrix", "QPX-9"]')
        if not terms:
            raise DataError("the vocabulary is empty", path=source, fix="give one term or more")
        return SpeechRequest(str(input), tuple(dict.fromkeys(terms)))


    def export_model(self, stack: SpeechStack, out_dir: Path, format: str = "transformers") -> list[str]:
        """A transformers folder, or (``ct2``) a CTranslate2 Whisper folder that faster-whisper loads."""
        from mmadapt.engine.export import merge_adapters, save_model_folder

        if format == "ct2":
            from mmadapt.models.ct2_export import write_ct2_whisper

            plain, merged = merge_adapters(stack.model)
            write_ct2_whisper(plain, stack.processor, out_dir)
            return merged
        return save_model_folder(stack.model, out_dir, stack.processor)

    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        terms = data.resources.get("vocabulary", [])
        rows = []
        for pred, ex in zip(predictions, examples):
            row = speech_metrics.score_utterance(ex.reference, pred.output, terms, id=ex.id)
            row["prompt_terms"] = pred.sources
            row["temperature"] = pred.info.get("temperature", 0.0)
            if "substituted" in pred.info:  # the rescoring pass's span -> term swaps (rescore.py)
                row["substituted"] = pred.info["substituted"]
            rows.append(row)
        return rows

    def aggregate(self, rows: list[dict[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
        corpus = speech_metrics.aggregate(rows)
        return {m: corpus[m] for m in metrics if corpus.get(m) is not None}

    def derived_slices(self, data: DataBundle) -> dict[str, list[str]]:
        """``terms_seen``: whether each eval clip's domain terms are all spoken in the train split."""
        return {"terms_seen": speech_data.terms_seen(data.train, data.eval)}

    def retrieval_source(self, recipe) -> str | None:
        return recipe.data.vocabulary

    def drift_texts(self, examples: Sequence[Example]) -> list[str]:
        """A clip stands for what is said in it: its transcript (drift compares topics and words)."""
        return [str(e.reference or "") for e in examples]

    def drift_terms(self, data: DataBundle) -> list[str]:
        return list(data.resources.get("vocabulary", []))

    def drift_embedder(self, recipe) -> str | None:
        return None  # transcripts are plain sentences: drift's default text embedder

    def output_json(self, output: Any, index: int, files_dir: Path) -> Any:
        return output

    def show(self, input: Any, prediction: Prediction) -> str:
        lines = [f"audio: {input}", f"transcript: {prediction.output}"]
        if prediction.sources:
            lines.append(f"   prompt terms: {', '.join(prediction.sources)}")
        return "\n".join(lines)

    def serve_inputs(self, request: ServeRequest) -> list[str | SpeechRequest]:
        """The uploaded file. ``temperature`` as OpenAI documents it for transcriptions (0..1): 0 (or
        none) is the version's own decoding (greedy or its beams, with ``inference.fallback``'s
        temperatures where the recipe enables them); above 0 every window is sampled at it, seeded by
        the request's ``seed`` (none: at random), as a :class:`SpeechRequest`. ``prompt`` and
        ``language`` are accepted and not used yet: the recipe's prompt strategy and vocabulary decide
        the decoder prompt, its model the language."""
        if request.file is None:
            raise RequestError("no audio file", fix="send the audio as the multipart field `file`")
        if request.fields.get("response_format") not in (None, "json"):
            raise RequestError(f"response_format {request.fields['response_format']!r} is not served", fix="ask for json")
        temperature = request.fields.get("temperature") or 0.0  # a number by now (serve/wire.py: 0..2)
        if not 0.0 <= temperature <= 1.0:
            raise RequestError(f"`temperature` {temperature:g} is outside 0..1 for a transcription", param="temperature",
                               code="invalid_value", fix="send a temperature between 0 and 1 (0: the version's own decoding)")
        if temperature > 0:
            return [SpeechRequest(str(request.file), temperature=float(temperature), seed=request.fields.get("seed"))]
        return [str(request.file)]

    def serve_check(self, inputs: list, request: ServeRequest, stack: SpeechStack) -> None:
        """A sampled transcription needs the transformers decoder (CTranslate2 decodes greedily here)."""
        sampled = any(isinstance(x, SpeechRequest) and x.temperature > 0 for x in inputs)
        if sampled and stack.recipe.inference.engine != "transformers":
            raise RequestError(f"`temperature` > 0 is not served with inference.engine: {stack.recipe.inference.engine}",
                               param="temperature", code="invalid_value", fix="send temperature 0")

    def serve_payload(self, predictions: list[Prediction], request: ServeRequest) -> dict[str, Any]:
        """OpenAI's ``text``; under ``mmadapt`` the prompt's terms and the temperature the kept decode
        used (the request's own, or the fallback's highest over the file's windows)."""
        info = predictions[0].info
        return {"text": predictions[0].output,
                "mmadapt": {"prompt_terms": predictions[0].sources, "temperature": info.get("temperature", 0.0)}}
