"""Batched Whisper transcription for the speech stack: windows, decoder prompts, two passes.

Audio is cut into 30 s windows; windows of similar length are batched whatever their prompts.
Each batch goes through the encoder once, then a greedy decoder that takes a different prompt
per row (left-padded, with position ids and an attention mask, so a row decodes exactly as it
would alone, and as ``generate`` does: same suppressed tokens, same forced prefix). With
retrieval, the second pass reuses the first pass's encoder states: on a CPU the encoder's
30-second input costs more than decoding a short utterance. New tokens per window are bounded
by ``max_new_tokens`` and by ``tokens_per_second`` x the window's seconds + 8, so a repetition
loop of tiny.en cannot run past what the speech could need. ``num_beams > 1`` goes through
``generate`` (one call per distinct prompt in a batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mmadapt.modalities.speech.audio import SAMPLE_RATE, iter_chunks, load_audio
from mmadapt.modalities.speech.language import TaskPrefix
from mmadapt.protocols import Prediction


def special_ids(tokenizer) -> dict[str, int]:
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (("prev", "<|startofprev|>"), ("sot", "<|startoftranscript|>"), ("notimestamps", "<|notimestamps|>"))
    }
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


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.inference_mode()
def greedy_decode(
    model, encoder_states: torch.Tensor, prefixes: Sequence[Sequence[int]], limits: Sequence[int]
) -> list[list[int]]:
    """Greedy continuations (up to ``<|endoftext|>``, which is dropped) of one decoder prefix per row,
    each row bounded by its own limit; suppresses the tokens ``generate`` suppresses."""
    gen = _base(model).generation_config
    base = _base(model)
    decoder, head, eot = base.model.decoder, base.proj_out, gen.eos_token_id
    n, width, device = len(prefixes), max(len(p) for p in prefixes), encoder_states.device
    ids = torch.full((n, width), eot, dtype=torch.long, device=device)
    mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for row, prefix in enumerate(prefixes):
        ids[row, width - len(prefix) :] = torch.tensor(list(prefix), device=device)
        mask[row, width - len(prefix) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    bound = torch.tensor(list(limits), device=device)
    suppress = torch.tensor(list(gen.suppress_tokens or []), dtype=torch.long, device=device)
    begin = torch.tensor(list(gen.begin_suppress_tokens or []), dtype=torch.long, device=device)
    out = decoder(
        input_ids=ids, attention_mask=mask, encoder_hidden_states=encoder_states, position_ids=positions, use_cache=True
    )
    last = positions[:, -1:]
    done = bound <= 0
    steps: list[torch.Tensor] = []
    for step in range(int(bound.max()) if n else 0):
        logits = head(out.last_hidden_state[:, -1]).float()
        if len(suppress):
            logits[:, suppress] = float("-inf")
        if step == 0 and len(begin):
            logits[:, begin] = float("-inf")
        token = torch.where(done, torch.full((n,), eot, device=device), logits.argmax(-1))
        steps.append(token)
        done = done | (token == eot) | (step + 1 >= bound)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)
        last = last + 1
        out = decoder(
            input_ids=token[:, None],
            attention_mask=mask,
            encoder_hidden_states=encoder_states,
            cache=out.cache,
            position_ids=last,
            use_cache=True,
        )
    rows = torch.stack(steps, 1).tolist() if steps else [[] for _ in range(n)]
    return [(r[: r.index(eot)] if eot in r else r)[:limit] for r, limit in zip(rows, limits)]


@torch.inference_mode()
def _beam_decode(model, encoder_states, prefixes, limits, num_beams: int, task: TaskPrefix) -> list[list[int]]:
    from transformers.modeling_outputs import BaseModelOutput

    special = _base(model).generation_config
    markers = {special.decoder_start_token_id, special.no_timestamps_token_id}
    out: list[list[int]] = [[] for _ in prefixes]
    by_prompt: dict[tuple, list[int]] = {}
    for row, prefix in enumerate(prefixes):
        by_prompt.setdefault(tuple(prefix), []).append(row)
    for prefix, rows in by_prompt.items():
        prompt = list(prefix[: prefix.index(special.decoder_start_token_id)])  # generate adds the task prefix itself
        kwargs = {"num_beams": num_beams, "max_new_tokens": max(limits[r] for r in rows), **task.generate_kwargs(prefix)}
        if prompt:
            kwargs["prompt_ids"] = torch.tensor(prompt, device=encoder_states.device)
        seqs = _base(model).generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states[rows]), **kwargs)
        for row, ids in zip(rows, (seqs.sequences if hasattr(seqs, "sequences") else seqs).tolist()):
            cut = max((i for i, t in enumerate(ids) if t in markers), default=-1)
            ids = [t for t in ids[cut + 1 :] if t != special.eos_token_id]
            out[row] = ids[: limits[row]]
    return out


class Windows:
    """The 30 s windows of a list of files, batched by length; encodes each batch once."""

    def __init__(self, stack, paths: Sequence[str], ct2=None):
        cfg = stack.recipe.inference
        self.stack = stack
        self.ct2 = ct2  # a CT2Whisper (inference.engine: ctranslate2) or None: transformers
        self.task = TaskPrefix(stack, ct2)  # <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|> per window
        self.items: list[tuple[int, object]] = []  # (file index, samples)
        for fi, path in enumerate(paths):
            for chunk in iter_chunks(load_audio(path), SAMPLE_RATE, cfg.chunk_seconds):
                self.items.append((fi, chunk.samples))
        order = sorted(range(len(self.items)), key=lambda n: len(self.items[n][1]))  # similar lengths share a batch
        self.batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    def limit(self, n: int) -> int:
        cfg = self.stack.recipe.inference
        if cfg.tokens_per_second <= 0:
            return cfg.max_new_tokens
        return max(1, min(cfg.max_new_tokens, int(cfg.tokens_per_second * len(self.items[n][1]) / SAMPLE_RATE) + 8))

    @torch.inference_mode()
    def encode(self, batch: list[int]) -> torch.Tensor:
        fe, model = self.stack.processor.feature_extractor, self.stack.model
        device = next(model.parameters()).device
        feats = fe([self.items[n][1] for n in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        if self.ct2 is not None:
            return self.ct2.encode(feats.numpy())
        return _base(model).get_encoder()(feats.to(device)).last_hidden_state

    def decode(self, states: torch.Tensor, batch: list[int], prompts: Sequence[list[int] | None]) -> list[str]:
        """Transcripts of the windows ``batch`` (encoder ``states``), each under its prompt ids (or none)."""
        stack = self.stack
        tok = stack.processor.tokenizer
        prefixes = [[*(p or []), *task] for p, task in zip(prompts, self.task.prefixes(states, batch))]
        limits = [self.limit(n) for n in batch]
        beams = stack.recipe.inference.num_beams
        ids = (
            self.ct2.generate(states, prefixes, limits, beams)
            if self.ct2 is not None
            else greedy_decode(stack.model, states, prefixes, limits)
            if beams == 1
            else _beam_decode(stack.model, states, prefixes, limits, beams, self.task)
        )
        return [tok.decode(row, skip_special_tokens=True).strip() for row in ids]

    def join(self, texts: dict[int, str], n_files: int) -> list[str]:
        per_file: list[list[str]] = [[] for _ in range(n_files)]
        for n, (fi, _samples) in enumerate(self.items):  # items are in file, then time order
            if texts.get(n):
                per_file[fi].append(texts[n])
        return [" ".join(parts) for parts in per_file]


def transcribe(
    stack, paths: Sequence[str], prompts: Sequence[list[int] | None], *, progress: bool = False, desc: str = "transcribing"
) -> list[str]:
    """Transcribe each file (window by window) under its own decoder prompt ids (or none)."""
    windows = Windows(stack, paths)
    texts: dict[int, str] = {}
    for batch in tqdm(windows.batches, desc=desc, unit="batch", disable=not progress, leave=False):
        states = windows.encode(batch)
        for n, text in zip(batch, windows.decode(states, batch, [prompts[windows.items[n][0]] for n in batch])):
            texts[n] = text
    return windows.join(texts, len(paths))


class SpeechPredictor:
    """Transcribe audio files under the stack: a static prompt, or a first pass + per-window retrieved terms.

    With retrieval each window's first-pass hypothesis picks its terms (merged with the static
    prompt's, within the budget) and the window is decoded again under them, from the same
    encoder states; a window for which nothing is retrieved keeps its first pass.
    """

    def __init__(self, stack):
        self.stack = stack
        self.ct2 = None
        if stack.recipe.inference.engine == "ctranslate2":
            from mmadapt.modalities.speech.ct2_engine import stack_ct2

            self.ct2 = stack_ct2(stack, stack.recipe.inference.compute_type)  # converted once per predictor

    def predict(self, inputs: Sequence[str], *, progress: bool = False) -> list[Prediction]:
        if self.stack.shared is None:
            return self._predict(inputs, progress)
        with self.stack.shared.use(self.stack.adapter) as model:  # the shared base, this version's adapter on
            self.stack.model = model  # (a peft model by now, if another version loaded an adapter since)
            return self._predict(inputs, progress)

    def _predict(self, inputs: Sequence[str], progress: bool) -> list[Prediction]:
        stack = self.stack
        static_terms = list(stack.prompt_terms or [])
        static = prompt_token_ids(stack, static_terms)
        windows = Windows(stack, inputs, self.ct2)
        first: dict[int, str] = {}
        second: dict[int, str] = {}
        used: dict[int, list[str]] = {}
        for batch in tqdm(windows.batches, desc="transcribing", unit="batch", disable=not progress, leave=False):
            states = windows.encode(batch)
            for n, text in zip(batch, windows.decode(states, batch, [static] * len(batch))):
                first[n] = second[n] = text
                used[n] = static_terms
            if stack.retriever is None:
                continue
            redo, prompts = [], []
            for n, terms in zip(batch, stack.retriever.retrieve([first[n] for n in batch])):
                combined = fit_terms(stack, list(dict.fromkeys([*terms, *static_terms])), stack.max_prompt_tokens)
                ids = prompt_token_ids(stack, combined)
                if ids is not None and ids != static:
                    redo.append(n)
                    prompts.append(ids)
                    used[n] = combined
            if redo:
                rows = [batch.index(n) for n in redo]
                for n, text in zip(redo, windows.decode(states[rows], redo, prompts)):
                    second[n] = text
        texts, firsts = windows.join(second, len(inputs)), windows.join(first, len(inputs))
        sources: list[list[str]] = [[] for _ in inputs]
        for n, (fi, _s) in enumerate(windows.items):
            sources[fi] = list(dict.fromkeys([*sources[fi], *used.get(n, [])]))
        if stack.retriever is None:
            return [Prediction(text, sources=static_terms) for text in texts]
        return [Prediction(text, sources=terms, info={"first_pass": f}) for text, terms, f in zip(texts, sources, firsts)]
