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
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mmadapt.errors import DataError, RequestError
from mmadapt.modalities.speech.audio import SAMPLE_RATE, iter_chunks, load_audio
from mmadapt.modalities.speech.boost import boost_processor
from mmadapt.modalities.speech.fallback import decode_with_fallback, sample_rows, window_generator
from mmadapt.modalities.speech.language import TaskPrefix
from mmadapt.modalities.speech.rescore import rescore
from mmadapt.protocols import Prediction


def special_ids(tokenizer) -> dict[str, int]:
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok)
        for name, tok in (("prev", "<|startofprev|>"), ("sot", "<|startoftranscript|>"), ("notimestamps", "<|notimestamps|>"))
    }
    ids["eot"] = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return ids


DEFAULT_TEMPLATE = "{terms}. Okay, let us get started. The first thing I want to look at is the plan for this week."
# ^ the terms, then a sentence as a transcript reads: Whisper continues in the style of what it saw last


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
    model,
    encoder_states: torch.Tensor,
    prefixes: Sequence[Sequence[int]],
    limits: Sequence[int],
    *,
    logits_processor=None,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    logprob_sums: list[float] | None = None,
    samplers: Sequence[tuple[float, torch.Generator] | None] | None = None,
) -> list[list[int]]:
    """Greedy continuations (up to ``<|endoftext|>``, which is dropped) of one decoder prefix per row,
    each row bounded by its own limit; suppresses the tokens ``generate`` suppresses.

    ``logits_processor(generated ids so far, logits) -> logits`` biases each step (boost.py);
    ``temperature > 0`` samples instead (with ``generator``); ``samplers``: per row, a (temperature,
    generator) it samples with, or None (fallback.py: a request's own temperature); ``logprob_sums`` (a list) receives each
    row's summed log-probability of its tokens and end-of-text, as openai-whisper's fallback reads it."""
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
    totals = torch.zeros(n, device=device)
    steps: list[torch.Tensor] = []
    for step in range(int(bound.max()) if n else 0):
        logits = head(out.last_hidden_state[:, -1]).float()
        if len(suppress):
            logits[:, suppress] = float("-inf")
        if step == 0 and len(begin):
            logits[:, begin] = float("-inf")
        if logits_processor is not None:
            generated = torch.stack(steps, 1) if steps else torch.zeros((n, 0), dtype=torch.long, device=device)
            logits = logits_processor(generated, logits)
        if temperature > 0:
            choice = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)[:, 0]
        else:
            choice = logits.argmax(-1)
        if samplers is not None:
            choice = sample_rows(logits, choice, samplers)
        token = torch.where(done, torch.full((n,), eot, device=device), choice)
        totals = totals + torch.where(done, 0.0, torch.log_softmax(logits, -1).gather(1, token[:, None])[:, 0])
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
    if logprob_sums is not None:
        logprob_sums[:] = totals.tolist()
    return [(r[: r.index(eot)] if eot in r else r)[:limit] for r, limit in zip(rows, limits)]


@torch.inference_mode()
def _beam_decode(
    model, encoder_states, prefixes, limits, num_beams: int, task: TaskPrefix | None = None, processor_for=None
) -> list[list[int]]:
    """``task``: the stack's language/task prefix (None: an English-only model's); ``processor_for(rows, beams)``:
    a logits processor for those batch rows (boost.py), or None."""
    from transformers import LogitsProcessorList
    from transformers.modeling_outputs import BaseModelOutput

    special = _base(model).generation_config
    markers = {special.decoder_start_token_id, special.no_timestamps_token_id}
    out: list[list[int]] = [[] for _ in prefixes]
    by_prompt: dict[tuple, list[int]] = {}
    for row, prefix in enumerate(prefixes):
        by_prompt.setdefault(tuple(prefix), []).append(row)
    for prefix, rows in by_prompt.items():
        prompt = list(prefix[: prefix.index(special.decoder_start_token_id)])  # generate adds the task prefix itself
        kwargs = {"num_beams": num_beams, "max_new_tokens": max(limits[r] for r in rows), **(task.generate_kwargs(prefix) if task is not None else {})}
        if prompt:
            kwargs["prompt_ids"] = torch.tensor(prompt, device=encoder_states.device)
        processor = processor_for(rows, num_beams) if processor_for else None
        if processor is not None:
            kwargs["logits_processor"] = LogitsProcessorList([processor])
        seqs = _base(model).generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states[rows]), **kwargs)
        for row, ids in zip(rows, (seqs.sequences if hasattr(seqs, "sequences") else seqs).tolist()):
            cut = max((i for i, t in enumerate(ids) if t in markers), default=-1)
            ids = [t for t in ids[cut + 1 :] if t != special.eos_token_id]
            out[row] = ids[: limits[row]]
    return out


class Windows:
    """The 30 s windows of a list of files, batched by length; encodes each batch once."""

    def __init__(self, stack, paths: Sequence[str], ct2=None, sampling: Sequence[tuple[float, int | None] | None] | None = None):
        cfg = stack.recipe.inference
        self.sampling = list(sampling or [None] * len(paths))  # per file: a request's (temperature > 0, seed), or None
        self.stack = stack
        self.ct2 = ct2  # a CT2Whisper (inference.engine: ctranslate2) or None: transformers
        self.task = TaskPrefix(stack, ct2)  # <|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|> per window
        self.items: list[tuple[int, object]] = []  # (file index, samples)
        self.part: list[int] = []  # each window's place in its file
        for fi, path in enumerate(paths):
            for k, chunk in enumerate(iter_chunks(load_audio(path), SAMPLE_RATE, cfg.chunk_seconds)):
                self.items.append((fi, chunk.samples))
                self.part.append(k)
        order = sorted(range(len(self.items)), key=lambda n: len(self.items[n][1]))  # similar lengths share a batch
        self.batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        self.temperatures: dict[int, float] = {}  # window -> the temperature its kept decode used
        self.substituted: dict[int, list[dict]] = {}  # window -> its rescoring substitutions (rescore.py)

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

    def decode(
        self, states: torch.Tensor, batch: list[int], prompts: Sequence[list[int] | None], boosts: Sequence | None = None
    ) -> list[str]:
        """Transcripts of the windows ``batch`` (encoder ``states``), each under its prompt ids (or none)
        and boosting its terms (``boosts``, one list per row, or None); greedy windows that come out
        degenerate are decoded again at higher temperatures (fallback.py), noted in ``temperatures``."""
        stack = self.stack
        tok = stack.processor.tokenizer
        prefixes = [[*(p or []), *task] for p, task in zip(prompts, self.task.prefixes(states, batch))]
        limits = [self.limit(n) for n in batch]
        boosts = list(boosts) if boosts is not None else [None] * len(batch)
        beams = stack.recipe.inference.num_beams
        special = special_ids(tok)
        own = [self.sampling[self.items[n][0]] for n in batch]  # a request's own temperature: sampled, no fallback
        sampled, plain = [r for r, o in enumerate(own) if o], [r for r, o in enumerate(own) if not o]
        ids: list[list[int]] = [[] for _ in batch]
        temps = {r: own[r][0] for r in sampled}
        if sampled and self.ct2 is not None:
            raise RequestError("`temperature` > 0 is not served with inference.engine: ctranslate2", param="temperature",
                               fix="send temperature 0, or serve the transformers engine")
        if sampled:
            gens = [(own[r][0], window_generator(own[r][1], self.part[batch[r]], states.device)) for r in sampled]
            out = greedy_decode(stack.model, states[sampled], [prefixes[r] for r in sampled], [limits[r] for r in sampled],
                                logits_processor=boost_processor(stack, [boosts[r] for r in sampled]), samplers=gens)
            for r, row in zip(sampled, out):
                ids[r] = row
        rest = states if not sampled else states[plain]  # the rows decoded the version's own way
        if plain and self.ct2 is not None:  # CTranslate2 decodes its own way: no boost, no fallback
            for r, row in zip(plain, self.ct2.generate(rest, [prefixes[r] for r in plain], [limits[r] for r in plain], beams)):
                ids[r], temps[r] = row, 0.0
        elif plain and beams > 1:
            beamed = _beam_decode(
                stack.model, rest, [prefixes[r] for r in plain], [limits[r] for r in plain], beams, self.task,
                lambda rows, k: boost_processor(stack, [boosts[plain[r]] for r in rows], beams=k, marker=special["notimestamps"]),
            )
            for r, row in zip(plain, beamed):
                ids[r], temps[r] = row, 0.0
        elif plain:

            def run(rows: list[int], temperature: float, seed: int):
                sums: list[float] = []
                gen = torch.Generator(device=states.device).manual_seed(seed) if temperature > 0 else None
                out = greedy_decode(
                    stack.model, states[rows], [prefixes[r] for r in rows], [limits[r] for r in rows],
                    logits_processor=boost_processor(stack, [boosts[r] for r in rows]),
                    temperature=temperature, generator=gen, logprob_sums=sums,
                )
                return out, sums

            found, kept = decode_with_fallback(
                run, plain, lambda t: tok.decode(t, skip_special_tokens=True), stack.recipe.inference.fallback
            )
            for r in plain:
                ids[r], temps[r] = found[r], kept[r]
        texts = [tok.decode(row, skip_special_tokens=True).strip() for row in ids]
        for r, n in enumerate(batch):
            self.temperatures[n] = temps[r]
            if self.ct2 is None and stack.rescores and boosts[r]:
                terms = list(boosts[r])[: stack.boost.max_terms]
                texts[r], self.substituted[n] = rescore(
                    _base(stack.model), tok, states[r : r + 1], prefixes[r], texts[r], terms, stack.boost
                )
        return texts

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


@dataclass(frozen=True)
class SpeechRequest:
    """One clip with its own vocabulary (``ask --vocabulary``, a batch line's ``vocabulary``, the
    library's ``SpeechRequest(path, terms)``): it replaces the artifact's vocabulary for this clip —
    in the static prompt, in what retrieval searches, in what is boosted. ``temperature`` > 0 (serve's
    transcription ``temperature``) samples each window at it, seeded by ``seed`` (fallback.py); 0: the
    version's own decoding. Without a vocabulary (``()``) the artifact's is used."""

    audio: str
    vocabulary: tuple[str, ...] = ()
    temperature: float = 0.0
    seed: int | None = None

    def __str__(self) -> str:
        return self.audio


def check_vocabulary(stack, terms: Sequence[str], source) -> None:
    """One DataError when a vocabulary (a request's, or the recipe's when prompt or retrieval is fitted) is
    empty or holds a term that alone overflows the stack's prompt template and budget: it could never be prompted."""
    if not terms:
        raise DataError("the vocabulary is empty", path=source, fix="give one term per line")
    for term in terms:
        if not fit_terms(stack, [term], stack.max_prompt_tokens):
            raise DataError(
                f"the term {term[:40]!r} is longer than the prompt budget ({stack.max_prompt_tokens} tokens)",
                path=source, fix="shorten the term or raise max_prompt_tokens",
            )


class SpeechPredictor:
    """Transcribe audio files under the stack: a static prompt, or a first pass + per-window retrieved terms.

    With retrieval each window's first-pass hypothesis picks its terms (merged with the static
    prompt's, within the budget) and the window is decoded again under them, from the same
    encoder states; a window for which nothing is retrieved keeps its first pass. With ``boost``
    (boost.py) the prompt's terms bias the first pass and the retrieved terms the second.
    An input is a path or a :class:`SpeechRequest` (a clip with its own vocabulary).
    """

    def __init__(self, stack):
        self.stack = stack
        self.ct2 = None
        if stack.recipe.inference.engine == "ctranslate2":
            from mmadapt.modalities.speech.ct2_engine import stack_ct2

            self.ct2 = stack_ct2(stack, stack.recipe.inference.compute_type)  # converted once per predictor
        self._retrievers: dict[tuple[str, ...], object] = {}

    def _plan(self, request: SpeechRequest | None) -> tuple[list[str], object]:
        """(static prompt terms, retriever) of one input: the artifact's, or those of its own vocabulary."""
        stack = self.stack
        if request is None or not request.vocabulary:
            return list(stack.prompt_terms or []), stack.retriever
        terms = list(request.vocabulary)
        retriever = stack.retriever
        if retriever is not None:
            key = tuple(terms)
            if key not in self._retrievers:
                self._retrievers[key] = retriever.for_terms(terms)
            retriever = self._retrievers[key]
        static = fit_terms(stack, terms, stack.max_prompt_tokens) if stack.prompt_terms is not None or retriever is None else []
        return static, retriever

    def predict(self, inputs: Sequence[str | SpeechRequest], *, progress: bool = False) -> list[Prediction]:
        if self.stack.shared is None:
            return self._predict(inputs, progress)
        with self.stack.shared.use(self.stack.adapter) as model:  # the shared base, this version's adapter on
            self.stack.model = model  # (a peft model by now, if another version loaded an adapter since)
            return self._predict(inputs, progress)

    def _predict(self, inputs: Sequence[str | SpeechRequest], progress: bool) -> list[Prediction]:
        stack = self.stack
        requests = [x if isinstance(x, SpeechRequest) else None for x in inputs]
        for req in requests:
            if req is not None and (req.vocabulary or not req.temperature):  # a sampled clip may keep the artifact's
                check_vocabulary(stack, req.vocabulary, f"vocabulary of {req.audio}")
        plans = [self._plan(req) for req in requests]
        statics = [terms for terms, _r in plans]
        boost_alone = "static" in stack.boost_passes and not stack.boost.with_prompt
        static_ids = [None if boost_alone else prompt_token_ids(stack, terms) for terms in statics]
        sampling = [(req.temperature, req.seed) if req is not None and req.temperature > 0 else None for req in requests]
        windows = Windows(stack, [str(x) for x in inputs], self.ct2, sampling)
        first: dict[int, str] = {}
        second: dict[int, str] = {}
        used: dict[int, list[str]] = {}
        passes = stack.boost_passes
        for batch in tqdm(windows.batches, desc="transcribing", unit="batch", disable=not progress, leave=False):
            states = windows.encode(batch)
            files = [windows.items[n][0] for n in batch]
            boosts = [statics[f] if "static" in passes else None for f in files]
            for n, text in zip(batch, windows.decode(states, batch, [static_ids[f] for f in files], boosts)):
                first[n] = second[n] = text
                used[n] = statics[windows.items[n][0]]
            by_retriever: dict[int, list[int]] = {}
            for n, f in zip(batch, files):
                if plans[f][1] is not None:
                    by_retriever.setdefault(id(plans[f][1]), []).append(n)
            redo, prompts, redo_boosts = [], [], []
            for group in by_retriever.values():
                f0 = windows.items[group[0]][0]
                for n, terms in zip(group, plans[f0][1].retrieve([first[n] for n in group])):
                    static = statics[windows.items[n][0]]
                    combined = fit_terms(stack, list(dict.fromkeys([*terms, *static])), stack.max_prompt_tokens)
                    ids = prompt_token_ids(stack, combined)
                    if ids is not None and ids != static_ids[windows.items[n][0]]:
                        redo.append(n)
                        prompts.append(ids)
                        redo_boosts.append(combined if "retrieved" in passes else None)
                        used[n] = combined
            if redo:
                rows = [batch.index(n) for n in redo]
                for n, text in zip(redo, windows.decode(states[rows], redo, prompts, redo_boosts)):
                    second[n] = text
        texts, firsts = windows.join(second, len(inputs)), windows.join(first, len(inputs))
        sources: list[list[str]] = [[] for _ in inputs]
        temperature = [0.0 for _ in inputs]
        substituted: list[list[dict]] = [[] for _ in inputs]
        for n, (fi, _s) in enumerate(windows.items):
            sources[fi] = list(dict.fromkeys([*sources[fi], *used.get(n, [])]))
            temperature[fi] = max(temperature[fi], windows.temperatures.get(n, 0.0))
            substituted[fi].extend(windows.substituted.get(n, []))
        out = []
        for fi, text in enumerate(texts):
            info = {"temperature": temperature[fi]}
            if stack.rescores:
                info["substituted"] = substituted[fi]  # rescore.py: span -> term, per window in time order
            if plans[fi][1] is not None:
                info["first_pass"] = firsts[fi]
            out.append(Prediction(text, sources=sources[fi] if plans[fi][1] is not None else statics[fi], info=info))
        return out
