"""The text modality: causal LLMs adapted by prompt, retrieval (RAG), adapters or full fine-tuning."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmadapt.errors import RequestError
from mmadapt.modalities.text import data as text_data
from mmadapt.modalities.text.adapter import TextAdapterStrategy
from mmadapt.modalities.text.chat import TextRequest, history_of, last_user, request_conversation, template_text
from mmadapt.modalities.text.config import TextData, TextInference
from mmadapt.modalities.text.full import TextFullStrategy
from mmadapt.modalities.text.metrics import METRICS, score_text
from mmadapt.modalities.text.model import TextStack, context_window, load_causal_lm, load_options
from mmadapt.modalities.text.predict import TextPredictor, prompt_tokens
from mmadapt.modalities.text.prompt import TextPromptStrategy
from mmadapt.modalities.text.retrieval import TextRetrievalStrategy
from mmadapt.protocols import DataBundle, Example, GuardSurface, Modality, Prediction, ServeRequest, Stack


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
    api_endpoint = "chat.completions"
    guard_surface = GuardSurface(words="input", output_text=True, escalation=True)  # predict.py fills the signals

    def guard_output(self, message: str, stack: Stack) -> str:
        return message

    def guard_words(self, input: Any) -> list[str]:
        """A question, or a conversation's system and user turns (what a caller wrote as its own)."""
        return [m["content"] for m in history_of(input) if m["role"] in ("system", "user")]

    def load_data(self, recipe) -> DataBundle:
        return text_data.load_data(recipe)

    def validate_data(self, recipe) -> list:
        """All problems of the Q/A splits and the knowledge base, each with file and line (see engine/validate.py)."""
        return text_data.validate_data(recipe)

    def new_stack(self, recipe) -> TextStack:
        model, tokenizer, info = load_causal_lm(
            recipe.base_model, trust_remote_code=recipe.trust_remote_code, chat_template=template_text(recipe),
            fallback_chat_template=template_text(recipe, "fallback_chat_template"), **load_options(recipe),
        )
        return TextStack(recipe, model, tokenizer, info)

    def base_key(self, recipe) -> tuple | None:
        """Shared unless a `full` part owns the weights or the adapter is prompt tuning (peft keeps one
        adapter type per model: the shared base's named adapters are LoRAs)."""
        adapter = recipe.strategies.get("adapter")
        if "full" in recipe.stack or (adapter is not None and adapter.method != "lora"):
            return None
        return ("text", recipe.base_model, recipe.trust_remote_code)

    def share_stack(self, recipe, base: TextStack | None) -> TextStack:
        from mmadapt.engine.shared import SharedBase

        if base is None:
            stack = self.new_stack(recipe)
            stack.shared = SharedBase(stack.model)
            return stack
        stack = TextStack(recipe, base.shared.model, base.tokenizer, base.base_info)
        stack.shared = base.shared
        return stack

    def predictor(self, stack: TextStack) -> TextPredictor:
        return TextPredictor(stack)

    def export_model(self, stack: TextStack, out_dir: Path, format: str = "transformers") -> list[str]:
        from mmadapt.engine.export import save_model_folder

        return save_model_folder(stack.model, out_dir, stack.tokenizer)

    def score(
        self, predictions: list[Prediction], examples: list[Example], metrics: Sequence[str], data: DataBundle
    ) -> list[dict[str, Any]]:
        rows = []
        for pred, ex in zip(predictions, examples):
            row = {"id": ex.id, "question": ex.input, "answer": pred.output, "reference": ex.reference}
            row.update(score_text(pred.output, ex.reference, ex.meta.get("key_fact"), metrics, ex.meta.get("accept")))
            rows.append(row)
        return rows

    def retrieval_source(self, recipe) -> str | None:
        return recipe.data.knowledge

    def drift_texts(self, examples: Sequence[Example]) -> list[str]:
        return [last_user(history_of(e.input)) for e in examples]

    def drift_terms(self, data: DataBundle) -> list[str]:
        return []

    def drift_embedder(self, recipe) -> str | None:
        section = recipe.strategies.get("retrieval") or recipe.compare_strategies.get("retrieval")
        return section.embedder if section is not None else None

    def output_json(self, output: Any, index: int, files_dir: Path) -> Any:
        return output

    def show(self, input: Any, prediction: Prediction) -> str:
        lines = [f"Q: {last_user(history_of(input))}", f"A: {prediction.output}"]
        if prediction.sources:
            lines.append(f"   sources: {', '.join(prediction.sources)}")
        return "\n".join(lines)

    def serve_inputs(self, request: ServeRequest) -> list:
        """The whole conversation (:func:`~mmadapt.modalities.text.chat.request_conversation`): a lone
        user message is the question; a system turn and earlier turns go with it through the chat
        template (the request's system turn stands in for the recipe's ``prompt.system``, as a
        conversation's own does in data); ``n`` answers ask it ``n`` times. ``max_tokens`` (or
        ``max_completion_tokens``), ``temperature``, ``top_p`` and ``seed`` (checked by the server:
        serve/wire.py) make each a :class:`~mmadapt.modalities.text.chat.TextRequest`; none: the
        recipe's ``inference`` decides, as offline."""
        fields = request.fields
        item = request_conversation(fields.get("messages"))
        n = int(fields.get("n") or 1)
        tokens = fields.get("max_completion_tokens", fields.get("max_tokens"))
        asked = {"max_new_tokens": tokens, **{k: fields.get(k) for k in ("temperature", "top_p", "seed")}}
        if all(value is None for value in asked.values()):
            return [item] * n
        return [TextRequest(item, **asked, choice=k) for k in range(n)]

    def serve_check(self, inputs: list, request: ServeRequest, stack: TextStack) -> None:
        """OpenAI's ``context_length_exceeded`` (400) when the prompt's tokens leave no room in the
        model's context (``param: messages``), or with the request's ``max_tokens`` /
        ``max_completion_tokens`` do not fit in it (``param``: that field). Without either field the
        recipe's ``inference.max_new_tokens`` is cut to what fits, by the predictor (predict.py).
        The prompt is counted as rendered, without retrieved passages (the predictor cuts for those)."""
        window = context_window(stack.model, stack.tokenizer)
        if window is None or not inputs:
            return
        item = inputs[0]  # the n answers of one request share their conversation and settings but the seed
        prompt = prompt_tokens(stack, item)
        asked = item.max_new_tokens if isinstance(item, TextRequest) else None
        if prompt >= window:
            raise RequestError(f"This model's maximum context length is {window} tokens. However, your messages resulted in "
                               f"{prompt} tokens, which leaves no room for the completion. Please reduce the length of the messages.",
                               param="messages", code="context_length_exceeded")
        if asked is not None and prompt + asked > window:
            field = "max_completion_tokens" if request.fields.get("max_completion_tokens") is not None else "max_tokens"
            raise RequestError(f"This model's maximum context length is {window} tokens. However, you requested {prompt + asked} "
                               f"tokens ({prompt} in the messages, {asked} in the completion: `{field}`). Please reduce the "
                               f"length of the messages or completion (`{field}` <= {window - prompt} here).",
                               param=field, code="context_length_exceeded")

    def serve_payload(self, predictions: list[Prediction], request: ServeRequest) -> dict[str, Any]:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": p.output}, "finish_reason": p.info.get("finish_reason", "stop")}
            for i, p in enumerate(predictions)
        ]
        body = {"object": "chat.completion", "choices": choices, "mmadapt": {"sources": [p.sources for p in predictions]}}
        if predictions and all("completion_tokens" in p.info for p in predictions):  # a guard's refusal has no counts
            prompt, completion = predictions[0].info["prompt_tokens"], sum(p.info["completion_tokens"] for p in predictions)
            body["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        return body

