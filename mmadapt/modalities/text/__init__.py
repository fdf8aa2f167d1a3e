"""The text modality: causal LLMs adapted by prompt, retrieval (RAG), adapters or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapt.modalities.text.adapter import TextAdapterStrategy
from mmadapt.modalities.text.config import TextData, TextInference
from mmadapt.modalities.text.data import fingerprint, read_jsonl_split
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
        paths = [recipe.path(p) for p in (recipe.data.train, recipe.data.eval, recipe.data.knowledge) if p]
        train = read_jsonl_split(recipe.path(recipe.data.train), "train") if recipe.data.train else []
        evaluation = read_jsonl_split(recipe.path(recipe.data.eval), "eval")
        digest, files = fingerprint([Path(p) for p in paths])
        return DataBundle(train, evaluation, {}, digest, files)

    def validate_data(self, recipe) -> list:
        """All problems of the Q/A splits and the knowledge base, each with file and line (see core/validate.py)."""
        from mmadapt.engine import validate as v
        from mmadapt.errors import DataError
        from mmadapt.modalities.text.data import KB_SUFFIXES, read_knowledge

        problems: list = []
        max_chars = recipe.train.max_seq_len * 4  # ~4 characters a token: over this, training truncates
        keys: dict[str, list] = {"train": [], "eval": []}
        for split in ("train", "eval"):
            ref = getattr(recipe.data, split)
            if not ref:
                continue
            path = recipe.path(ref)
            ids, count = [], 0
            for number, record in v.scan_jsonl(path, problems, what=f"the {split} split"):
                question, answer = record.get("question"), record.get("answer")
                if not isinstance(question, str) or not question.strip():
                    problems.append(v.error(path, number, "'question' must be a non-empty string", "add the question"))
                    continue
                if answer is not None and not isinstance(answer, str):
                    problems.append(v.error(path, number, f"'answer' must be a string, got {type(answer).__name__}"))
                    continue
                count += 1
                if not (answer or "").strip():
                    if split == "train":
                        problems.append(v.error(path, number, "empty answer: nothing to train on", "add the answer or drop the line"))
                    else:
                        problems.append(v.warning(path, number, "empty answer: every metric scores it 0", "add the reference answer"))
                size = len(question) + len(answer or "")
                if split == "train" and size > max_chars:
                    problems.append(
                        v.warning(path, number, f"{size} characters (~{size // 4} tokens) > train.max_seq_len {recipe.train.max_seq_len}: truncated in training",
                                  "shorten it or raise train.max_seq_len")
                    )
                ids.append((str(record.get("id") or f"{split}-{number}"), str(path), number))
                keys[split].append((v.normalize_text(question), str(path), number))
            problems.extend(v.duplicates(ids))
            if count == 0 and path.is_file() and path.stat().st_size:
                if not any(p.file == str(path) and p.line is None for p in problems):
                    problems.append(v.error(path, None, f"the {split} split holds no usable examples", "add lines with 'question' and 'answer'"))
        problems.extend(v.leakage(keys["train"], keys["eval"], "question"))
        if recipe.data.knowledge:
            kb = recipe.path(recipe.data.knowledge)
            if kb.is_dir():
                docs = sorted(p for p in kb.rglob("*") if p.is_file() and p.suffix.lower() in KB_SUFFIXES)
                if not docs:
                    problems.append(v.error(kb, None, "no .md or .txt documents", "put the knowledge base documents in this folder"))
                for doc in docs:
                    try:
                        text = doc.read_text(encoding="utf-8")
                    except UnicodeDecodeError as exc:
                        problems.append(v.error(doc, None, f"not UTF-8 text (byte {exc.start})", "save it as UTF-8"))
                        continue
                    if doc.stat().st_size > v.MAX_JSONL_BYTES:
                        problems.append(v.error(doc, None, "larger than 200 MiB", "split the document"))
                    elif not text.strip():
                        problems.append(v.warning(doc, None, "empty document: adds no passages", "add its text or remove it"))
            else:
                ids = []
                for number, record in v.scan_jsonl(kb, problems, what="the knowledge base"):
                    if not isinstance(record.get("text"), str) or "id" not in record:
                        problems.append(v.error(kb, number, "expected an object with 'id' and 'text'"))
                        continue
                    if not record["text"].strip():
                        problems.append(v.warning(kb, number, "empty passage text"))
                    ids.append((str(record["id"]), str(kb), number))
                problems.extend(v.duplicates(ids))
            if not v.has_errors(p for p in problems if p.file.startswith(str(kb))):
                try:
                    read_knowledge(kb)
                except DataError as exc:
                    problems.append(v.Problem.from_error(exc, kb))
        return problems

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
