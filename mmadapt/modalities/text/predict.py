"""Batched generation for the text stack: retrieve, build chats, left-pad, generate.

Each prediction carries the guard's escalation signals (:class:`mmadapt.protocols.GuardSurface`):
``info["mean_logprob"]`` (the mean log-probability of the answer's tokens under the model, from
``generate``'s scores via ``compute_transition_scores``), and with retrieval ``info["retrieval_score"]``
(the best passage's cosine score) and ``info["passages"]`` (the retrieved texts)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mmadapt.modalities.text.chat import build_chat, render, retrieval_query
from mmadapt.modalities.text.retrieval import passage_text
from mmadapt.models.quiet import quiet_libraries
from mmadapt.protocols import Prediction


def chat_texts(stack, inputs: Sequence) -> tuple[list[str], list[list[dict]]]:
    """The rendered prompts (generation prompt appended) and the passages retrieved for each input
    (a question, or a conversation: list of {role, content} ending with the user turn to answer)."""
    if stack.retriever is not None:
        retrieved = stack.retriever.retrieve([retrieval_query(item, stack.retriever.history_turns) for item in inputs])
    else:
        retrieved = [[] for _ in inputs]
    texts = []
    for item, hits in zip(inputs, retrieved):
        messages = build_chat(stack, item, [passage_text(h) for h in hits])
        texts.append(render(stack.tokenizer, messages, generation=True))
    return texts, retrieved


def turn_end_ids(tokenizer) -> list[int]:
    """The special token that closes an assistant turn in the chat template (``<end_of_turn>``,
    ``<|eot_id|>``), so generation stops there even when the model's own EOS is another token (a
    base model under a recipe's template); [] when the turn ends in plain text."""
    marker = "\u2063mmadapt\u2063"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # noqa: BLE001 - a template that cannot render this is reported where it renders real input
        return []
    tail = text.split(marker, 1)[1] if marker in text else ""
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)  # GGUF tokenizers add turn tokens unmarked
    return ids[:1] if ids and ids[0] in special else []


class TextPredictor:
    def __init__(self, stack):
        self.stack = stack
        self.settings = stack.recipe.inference  # TextInference

    def predict(self, inputs: Sequence[str], *, progress: bool = False) -> list[Prediction]:
        if self.stack.shared is None:
            return self._predict(self.stack.model, inputs, progress)
        with self.stack.shared.use(self.stack.adapter) as model:  # the shared base, this version's adapter on
            return self._predict(model, inputs, progress)

    @torch.inference_mode()
    def _predict(self, model, inputs: Sequence[str], progress: bool) -> list[Prediction]:
        stack, cfg = self.stack, self.settings
        tok = stack.tokenizer
        model.eval()
        texts, retrieved = chat_texts(stack, inputs)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        outputs: dict[int, str] = {}
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        device = next(model.parameters()).device
        gen_kwargs = dict(max_new_tokens=cfg.max_new_tokens, pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        turn_ends = [i for i in turn_end_ids(tok) if i not in eos]
        if turn_ends:
            gen_kwargs["eos_token_id"] = eos + turn_ends
        stops = {*eos, *turn_ends} | {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}  # what ends an answer
        logprobs: dict[int, float | None] = {}
        if cfg.temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if cfg.repetition_penalty != 1.0:
            gen_kwargs["repetition_penalty"] = cfg.repetition_penalty
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False):
            enc = tok([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with quiet_libraries(logs_errors_only=True):
                out = model.generate(**enc, **gen_kwargs)
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            token_logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            for i, ids, scores in zip(batch, new, token_logprobs):
                outputs[i] = tok.decode(ids, skip_special_tokens=True).strip()
                logprobs[i] = _mean_answer_logprob(ids.tolist(), scores.tolist(), stops)
        return [
            Prediction(outputs[i], sources=[h["id"] for h in retrieved[i]], info=_info(retrieved[i], logprobs[i]))
            for i in range(len(texts))
        ]


def _mean_answer_logprob(ids: list[int], scores: list[float], stops: set[int]) -> float | None:
    """Mean log-probability of the tokens before the first stop token (None for an empty answer)."""
    end = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    kept = scores[:end]
    return round(sum(kept) / len(kept), 4) if kept else None


def _info(hits: list[dict], mean_logprob: float | None) -> dict:
    info: dict = {"mean_logprob": mean_logprob}
    if hits:
        info["retrieval_score"] = max(h["score"] for h in hits)
        info["passages"] = [passage_text(h) for h in hits]
    return info
