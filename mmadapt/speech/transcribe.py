"""Batched Whisper transcription for the speech stack: chunking, decoder prompts, two passes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field
from tqdm.auto import tqdm

from mmadapt.core.strategy import Prediction, StrictModel
from mmadapt.speech.audio import SAMPLE_RATE, iter_chunks, load_audio


class SpeechInference(StrictModel):
    max_new_tokens: int = Field(96, ge=1, le=440, description="per 30 s window; bounds tiny models' repetition loops")
    batch_size: int = Field(8, ge=1, le=256)
    num_beams: int = Field(1, ge=1, le=16)
    chunk_seconds: float = Field(30.0, gt=1.0, le=30.0)


def special_ids(tokenizer) -> dict[str, int]:
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("prev", "<|startofprev|>"), ("sot", "<|startoftranscript|>"), ("notimestamps", "<|notimestamps|>"))}
    ids["eot"] = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return ids


def prompt_text(stack, terms: Sequence[str]) -> str:
    return stack.prompt_template.format(terms=", ".join(terms))


def fit_terms(stack, terms: Sequence[str], budget: int) -> list[str]:
    """The longest prefix of ``terms`` whose prompt fits in ``budget`` tokens."""
    tok = stack.processor.tokenizer
    kept: list[str] = []
    for term in terms:
        candidate = [*kept, term]
        if len(tok.encode(" " + prompt_text(stack, candidate), add_special_tokens=False)) > budget:
            break
        kept = candidate
    return kept


def prompt_token_ids(stack, terms: Sequence[str] | None) -> list[int] | None:
    """``<|startofprev|>`` + the prompt's tokens (what ``generate(prompt_ids=...)`` takes), or None."""
    if not terms:
        return None
    tok = stack.processor.tokenizer
    body = tok.encode(" " + prompt_text(stack, terms), add_special_tokens=False)[: stack.max_prompt_tokens]
    return [special_ids(tok)["prev"], *body]


def _strip_prefix(ids: list[int], special: dict[str, int]) -> list[int]:
    """Drop everything up to the last start/no-timestamps marker: generate may or may not return
    the forced decoder tokens and the prompt, so strip by token id, not by position."""
    markers = {special["sot"], special["notimestamps"]}
    last = max((i for i, t in enumerate(ids) if t in markers), default=-1)
    return ids[last + 1 :]


@torch.inference_mode()
def transcribe(stack, paths: Sequence[str], prompts: Sequence[list[int] | None], *, progress: bool = False, desc: str = "transcribing") -> list[str]:
    """Transcribe each file (chunked into windows) under its own decoder prompt; windows that
    share a prompt share a batch."""
    cfg = stack.recipe.inference
    fe, tok, model = stack.processor.feature_extractor, stack.processor.tokenizer, stack.model
    special = special_ids(tok)
    items = []  # (file index, window index, samples, prompt key)
    for fi, path in enumerate(paths):
        audio = load_audio(path)
        for wi, chunk in enumerate(iter_chunks(audio, SAMPLE_RATE, cfg.chunk_seconds)):
            items.append((fi, wi, chunk.samples, tuple(prompts[fi]) if prompts[fi] else None))
    groups: dict[tuple | None, list[int]] = {}
    for n, item in enumerate(items):
        groups.setdefault(item[3], []).append(n)
    texts: dict[int, str] = {}
    device = next(model.parameters()).device
    batches = [(key, members[i : i + cfg.batch_size]) for key, members in groups.items() for i in range(0, len(members), cfg.batch_size)]
    for key, batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
        feats = fe([items[n][2] for n in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features.to(device)
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams)
        if key is not None:
            kwargs["prompt_ids"] = torch.tensor(key, device=device)
        out = model.generate(input_features=feats, **kwargs)
        sequences = out.sequences if hasattr(out, "sequences") else out
        for n, ids in zip(batch, sequences.tolist()):
            texts[n] = tok.decode(_strip_prefix(ids, special), skip_special_tokens=True).strip()
    per_file: list[list[str]] = [[] for _ in paths]
    for n, (fi, _wi, _s, _k) in enumerate(items):
        per_file[fi].append(texts[n])
    return [" ".join(t for t in parts if t) for parts in per_file]


class SpeechPredictor:
    """Transcribe audio files under the stack: static prompt, or a first pass + retrieved terms."""

    def __init__(self, stack):
        self.stack = stack

    def predict(self, inputs: Sequence[str], *, progress: bool = False) -> list[Prediction]:
        stack = self.stack
        static = prompt_token_ids(stack, stack.prompt_terms)
        first = transcribe(stack, inputs, [static] * len(inputs), progress=progress, desc="transcribing")
        if stack.retriever is None:
            return [Prediction(text, sources=list(stack.prompt_terms or [])) for text in first]
        chosen = stack.retriever.retrieve(first)
        prompts, used = [], []
        for terms in chosen:
            combined = list(dict.fromkeys([*terms, *(stack.prompt_terms or [])]))
            combined = fit_terms(stack, combined, stack.max_prompt_tokens)
            used.append(combined)
            prompts.append(prompt_token_ids(stack, combined))
        redo = [i for i, p in enumerate(prompts) if p is not None and p != static]
        second = list(first)  # an utterance with no retrieved terms keeps its first pass
        for i, text in zip(redo, transcribe(stack, [inputs[i] for i in redo], [prompts[i] for i in redo], progress=progress, desc="second pass")):
            second[i] = text
        return [Prediction(text, sources=terms, info={"first_pass": f}) for text, terms, f in zip(second, used, first)]
