"""The speech modality: Whisper adapted to a domain vocabulary by prompt, retrieval, LoRA or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapt.modalities.speech import metrics as speech_metrics
from mmadapt.modalities.speech.adapter import SpeechAdapterStrategy
from mmadapt.modalities.speech.config import SpeechData, SpeechInference
from mmadapt.modalities.speech.data import read_audiofolder, read_vocabulary
from mmadapt.modalities.speech.full import SpeechFullStrategy
from mmadapt.modalities.speech.model import SpeechStack, load_whisper
from mmadapt.modalities.speech.predict import SpeechPredictor
from mmadapt.modalities.speech.prompt import SpeechPromptStrategy
from mmadapt.modalities.speech.retrieval import SpeechRetrievalStrategy
from mmadapt.modalities.text.data import fingerprint
from mmadapt.protocols import DataBundle, Example, Modality, Prediction

METRICS = ("wer", "cer", "b_wer", "u_wer", "term_recall", "term_precision", "mean_wer", "median_wer")


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
    input_keys = ("audio", "file_name", "path", "input")

    def load_data(self, recipe) -> DataBundle:
        d = recipe.data
        train = read_audiofolder(recipe.path(d.train), "train") if d.train else []
        evaluation = read_audiofolder(recipe.path(d.eval), "eval")
        vocabulary = read_vocabulary(recipe.path(d.vocabulary)) if d.vocabulary else []
        paths = [recipe.path(p) for p in (d.train, d.eval, d.vocabulary) if p]
        digest, files = fingerprint([Path(p) for p in paths])
        return DataBundle(train, evaluation, {"vocabulary": vocabulary}, digest, files)

    def validate_data(self, recipe) -> list:
        """All problems of the audiofolder splits and the vocabulary, each with file and line (see core/validate.py).

        Errors: missing/empty/corrupt audio, zero samples, NaN samples, empty transcripts, duplicate
        file names, audio over 30 s in train (Whisper sees 30 s windows). Warnings: a sample rate other
        than 16 kHz or more than one channel (resampled/downmixed on load), the same audio (by hash)
        in train and eval, eval audio over 30 s (transcribed window by window).
        """
        import soundfile as sf

        from mmadapt.engine import validate as v
        from mmadapt.errors import DataError
        from mmadapt.modalities.speech.audio import CHUNK_SECONDS, SAMPLE_RATE, load_audio

        problems: list = []
        hashes: dict[str, list] = {"train": [], "eval": []}
        for split in ("train", "eval"):
            ref = getattr(recipe.data, split)
            if not ref:
                continue
            folder = recipe.path(ref)
            meta = folder / "metadata.jsonl"
            if not folder.is_dir():
                problems.append(
                    v.error(
                        folder,
                        None,
                        "an audio split is a folder with metadata.jsonl",
                        "point data.train / data.eval at the folder",
                    )
                )
                continue
            names = []
            for number, record in v.scan_jsonl(meta, problems, what="metadata.jsonl"):
                name, text = record.get("file_name"), record.get("transcription")
                if not isinstance(name, str) or not name:
                    problems.append(v.error(meta, number, "'file_name' must be a non-empty string"))
                    continue
                names.append((name, str(meta), number))
                if not isinstance(text, str) or not text.strip():
                    problems.append(v.error(meta, number, f"empty transcription for {name}", "add what is said in the clip"))
                audio = (folder / name).resolve()
                if folder.resolve() not in audio.parents:
                    problems.append(
                        v.error(meta, number, f"{name} points outside the split folder", "keep the audio inside the split folder")
                    )
                    continue
                try:
                    load_audio(audio)  # the loader's own checks: missing, empty, undecodable, no samples, NaN
                    info = sf.info(str(audio))
                except DataError as exc:
                    problems.append(
                        v.Problem(v.ERROR, str(meta), number, f"{name}: {v.Problem.from_error(exc).message}", exc.fix)
                    )
                    continue
                except Exception:  # noqa: BLE001 - decoded by torchaudio but no soundfile header: no rate/channel checks
                    info = None
                if info is not None:
                    if info.samplerate != SAMPLE_RATE:
                        problems.append(
                            v.warning(meta, number, f"{name}: {info.samplerate} Hz, resampled to {SAMPLE_RATE} Hz on load")
                        )
                    if info.channels != 1:
                        problems.append(v.warning(meta, number, f"{name}: {info.channels} channels, downmixed to mono on load"))
                    seconds = info.frames / info.samplerate if info.samplerate else 0.0
                    if seconds > CHUNK_SECONDS:
                        if split == "train":
                            problems.append(
                                v.error(
                                    meta,
                                    number,
                                    f"{name}: {seconds:.1f} s > {CHUNK_SECONDS:.0f} s: Whisper trains on one 30 s window",
                                    "cut it into clips of at most 30 s with their transcripts",
                                )
                            )
                        else:
                            problems.append(v.warning(meta, number, f"{name}: {seconds:.1f} s, transcribed in 30 s windows"))
                hashes[split].append((v.file_sha256(audio), str(meta), number))
            problems.extend(v.duplicates(names, "file_name"))
        problems.extend(v.leakage(hashes["train"], hashes["eval"], "audio (sha256)"))
        if recipe.data.vocabulary:
            try:
                read_vocabulary(recipe.path(recipe.data.vocabulary))
            except DataError as exc:
                problems.append(v.Problem.from_error(exc))
        return problems

    def new_stack(self, recipe) -> SpeechStack:
        model, processor, info = load_whisper(recipe.base_model, trust_remote_code=recipe.trust_remote_code)
        vocabulary = read_vocabulary(recipe.path(recipe.data.vocabulary)) if recipe.data.vocabulary else []
        return SpeechStack(recipe, model, processor, info, vocabulary)

    def predictor(self, stack: SpeechStack) -> SpeechPredictor:
        return SpeechPredictor(stack)

    def export_model(self, stack: SpeechStack, out_dir: Path) -> list[str]:
        from mmadapt.engine.export import save_model_folder

        return save_model_folder(stack.model, out_dir, stack.processor)

    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
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
