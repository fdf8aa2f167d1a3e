"""Batched generation for the text stack: retrieve, build chats, left-pad, generate.

Each prediction carries the guard's escalation signals (:class:`mmadapt.protocols.GuardSurface`):
``info["mean_logprob"]`` (the mean log-probability of the answer's tokens under the model, from
``generate``'s scores via ``compute_transition_scores``), and with retrieval ``info["retrieval_score"]``
(the best passage's cosine score) and ``info["passages"]`` (the retrieved texts).

A row's ``max_new_tokens`` is cut to what its prompt leaves of the model's context length
(:func:`~mmadapt.modalities.text.model.context_window`), so a long conversation under the recipe's
default still fits (``finish_reason: "length"`` when the cut is reached); serve refuses a request
whose own ``max_tokens`` does not fit before it waits (:func:`prompt_tokens`, ``TextModality.serve_check``)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from mmadapt.modalities.text.chat import TextRequest, build_chat, render, retrieval_query
from mmadapt.modalities.text.model import context_window
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


def prompt_tokens(stack, item) -> int:
    """The tokens of one input's prompt as the predictor renders it (the stack's prompt, the chat
    template, the generation prompt), without retrieved passages: what serve checks before a
    request waits; the predictor counts the passages too when it cuts ``max_new_tokens``."""
    text = render(stack.tokenizer, build_chat(stack, item), generation=True)
    return len(stack.tokenizer(text, add_special_tokens=False)["input_ids"])


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


@dataclass(frozen=True)
class Settings:
    """One row's generation settings: the recipe's ``inference``, or a :class:`TextRequest`'s own."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None  # a sampling row's generator seed; None: a random one
    choice: int = 0


def settings_of(item, cfg) -> Settings:
    if not isinstance(item, TextRequest):  # the recipe's own sampling draws its seed from the global RNG (train.seed)
        seed = int(torch.randint(0, 2**62, ()).item()) if cfg.temperature > 0 else None
        return Settings(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return Settings(pick(item.max_new_tokens, cfg.max_new_tokens), pick(item.temperature, cfg.temperature),
                    pick(item.top_p, cfg.top_p), item.seed, item.choice)


def fit_context(s: Settings, prompt: int, window: int | None) -> Settings:
    """A row's settings with ``max_new_tokens`` cut to what its ``prompt`` tokens leave of the
    model's context ``window`` (at least 1; None: no known window, unchanged)."""
    if window is None or prompt + s.max_new_tokens <= window:
        return s
    return replace(s, max_new_tokens=max(1, window - prompt))


class RowSampler(LogitsProcessor):
    """Sampling row by row inside greedy decoding: a sampling row's scores are divided by its
    temperature, cut to its ``top_p`` nucleus (as transformers' warpers do) and given Gumbel noise
    from the row's own ``torch.Generator``, so their argmax is a draw from that distribution (the
    Gumbel-max trick); a row at temperature 0 is left greedy. Rows of one batch may so differ in
    temperature, and a seeded row gives the same tokens whatever batch it is in and whatever other
    thread samples (no global RNG). It records the log-probability of each chosen token under the
    row's warped distribution (what ``compute_transition_scores`` gives for transformers' sampling)."""

    def __init__(self, rows: Sequence[Settings]):
        self.rows = list(rows)
        self.generators = [self.generator(s) if s.temperature > 0 else None for s in self.rows]
        self.logprobs: list[torch.Tensor] = []

    @staticmethod
    def generator(s: Settings) -> torch.Generator:
        """Seeded by the request's ``seed`` and the answer's index among its ``n`` (the recipe's own
        sampling: a seed drawn from the global RNG, see :func:`settings_of`); no seed: at random."""
        if s.seed is not None:
            seed = (s.seed * 1_000_003 + s.choice) % 2**63
        else:
            seed = secrets.randbits(63)
        return torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        clean = scores.float().clone()
        noisy = clean.clone()
        for r, (s, gen) in enumerate(zip(self.rows, self.generators)):
            if gen is None:
                continue
            row = clean[r] / s.temperature
            if s.top_p < 1.0:
                ordered, index = torch.sort(row, descending=False)
                drop = ordered.softmax(-1).cumsum(-1) <= 1 - s.top_p
                drop[-1] = False  # the most likely token always stays
                row = row.masked_fill(drop.scatter(0, index, drop), float("-inf"))
            clean[r] = row
            uniform = torch.rand(row.shape[-1], generator=gen).clamp_(min=1e-20).to(row.device)
            noisy[r] = row - torch.log(-torch.log(uniform))
        chosen = noisy.argmax(-1, keepdim=True)
        self.logprobs.append(torch.log_softmax(clean, -1).gather(1, chosen)[:, 0])
        return noisy


class TextPredictor:
    def __init__(self, stack):
        self.stack = stack
        self.settings = stack.recipe.inference  # TextInference

    def predict(self, inputs: Sequence, *, progress: bool = False) -> list[Prediction]:
        """A question, a conversation, or either as a :class:`TextRequest` with its own settings."""
        if self.stack.shared is None:
            return self._predict(self.stack.model, inputs, progress)
        with self.stack.shared.use(self.stack.adapter) as model:  # the shared base, this version's adapter on
            return self._predict(model, inputs, progress)

    @torch.inference_mode()
    def _predict(self, model, inputs: Sequence, progress: bool) -> list[Prediction]:
        stack, cfg = self.stack, self.settings
        tok = stack.tokenizer
        model.eval()
        texts, retrieved = chat_texts(stack, inputs)
        window = context_window(model, tok)
        prompt_ids = tok(texts, add_special_tokens=False)["input_ids"] if texts else []  # once: counted here, padded per batch
        rows = [fit_context(settings_of(item, cfg), len(ids), window) for item, ids in zip(inputs, prompt_ids)]
        order = sorted(range(len(texts)), key=lambda i: (rows[i].max_new_tokens, len(texts[i])))  # similar lengths share a batch
        outputs: dict[int, str] = {}
        batches = []  # rows of one max_new_tokens; each row samples (or not) by its own settings
        for i in order:
            if batches and len(batches[-1]) < cfg.batch_size and rows[batches[-1][0]].max_new_tokens == rows[i].max_new_tokens:
                batches[-1].append(i)
            else:
                batches.append([i])
        device = next(model.parameters()).device
        gen_kwargs = dict(pad_token_id=tok.pad_token_id, return_dict_in_generate=True,
                          do_sample=False, temperature=None, top_p=None, top_k=None)
        eos = model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        turn_ends = [i for i in turn_end_ids(tok) if i not in eos]
        if turn_ends:
            gen_kwargs["eos_token_id"] = eos + turn_ends
        stops = {*eos, *turn_ends} | {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}  # what ends an answer
        logprobs: dict[int, float | None] = {}
        finish: dict[int, dict] = {}  # finish_reason and token counts (OpenAI's usage)
        if cfg.repetition_penalty != 1.0:
            gen_kwargs["repetition_penalty"] = cfg.repetition_penalty
        for batch in tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False):
            enc = tok.pad({"input_ids": [prompt_ids[i] for i in batch]}, return_tensors="pt").to(device)
            sampler = RowSampler([rows[i] for i in batch])
            limit = rows[batch[0]].max_new_tokens
            with quiet_libraries(logs_errors_only=True):
                out = model.generate(**enc, **gen_kwargs, max_new_tokens=limit, logits_processor=LogitsProcessorList([sampler]))
            new = out.sequences[:, enc["input_ids"].shape[1] :]
            token_logprobs = torch.stack(sampler.logprobs, dim=1) if sampler.logprobs else torch.zeros(len(batch), 0)
            for i, ids, scores, mask in zip(batch, new, token_logprobs, enc["attention_mask"]):
                ids = ids.tolist()
                outputs[i] = tok.decode(ids, skip_special_tokens=True).strip()
                logprobs[i] = _mean_answer_logprob(ids, scores.tolist(), stops)
                end = next((k for k, t in enumerate(ids) if t in stops), None)
                finish[i] = {"finish_reason": "length" if end is None and len(ids) >= limit else "stop",
                             "prompt_tokens": int(mask.sum()), "completion_tokens": len(ids) if end is None else end}
        return [
            Prediction(outputs[i], sources=[h["id"] for h in retrieved[i]], info=_info(retrieved[i], logprobs[i], finish[i]))
            for i in range(len(texts))
        ]


def _mean_answer_logprob(ids: list[int], scores: list[float], stops: set[int]) -> float | None:
    """Mean log-probability of the tokens before the first stop token (None for an empty answer)."""
    end = next((k for k, t in enumerate(ids) if t in stops), len(ids))
    kept = scores[:end]
    return round(sum(kept) / len(kept), 4) if kept else None


def _info(hits: list[dict], mean_logprob: float | None, finish: dict) -> dict:
    info: dict = {"mean_logprob": mean_logprob, **finish}
    if hits:
        info["retrieval_score"] = max(h["score"] for h in hits)
        info["passages"] = [passage_text(h) for h in hits]
    return info
