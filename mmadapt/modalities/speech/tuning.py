"""Whisper training data for the shared loop: decoder sequences with the loss on the transcript.

The decoder input is ``[<|startofprev|> prompt] <|startoftranscript|> [<|lang|> <|task|>]
<|notimestamps|> transcript <|endoftext|>`` (language and task for multilingual checkpoints,
see language.py), built with the stack fitted so far: the static vocabulary
prompt (or none); with retrieval, each utterance also appears a second time prompted with
its own terms mixed with random distractors from the vocabulary, so the model learns to
use a prompt without trusting it blindly, and still transcribes well without one (the
first pass that retrieval reads).
With the encoder frozen (the default) its outputs are computed once and cached: on a
CPU the 30-second encoder input costs far more than the decoder. With ``trim`` (the
default with a frozen encoder) the decoder cross-attends, while training, only to the
encoder states of the clip's own audio plus one second (50 states a second of 1500):
projecting 1500 padded states to keys and values in each decoder layer was two thirds
of a LoRA step on a CPU. Inference still sees all 1500 states.
"""

from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from mmadapt.engine import trainer
from mmadapt.errors import DataError
from mmadapt.modalities.speech.audio import SAMPLE_RATE, load_audio
from mmadapt.modalities.speech.language import TaskPrefix
from mmadapt.modalities.speech.predict import fit_terms, prompt_token_ids, special_ids
from mmadapt.protocols import DataBundle, FitContext, FitReport

IGNORE = -100


def _retrieval_terms(stack, example, rng: random.Random) -> list[str]:
    """The utterance's own terms mixed with random vocabulary distractors (top_k in all), shuffled,
    merged with the static prompt's terms within the budget: what a second pass is prompted with."""
    top_k = stack.retriever.config.top_k
    own = [t for t in example.meta.get("terms", []) if t in stack.vocabulary]
    others = [t for t in stack.vocabulary if t not in own]
    terms = own + rng.sample(others, min(len(others), top_k - len(own) if len(own) < top_k else 2))
    rng.shuffle(terms)
    return fit_terms(stack, list(dict.fromkeys([*terms, *(stack.prompt_terms or [])])), stack.max_prompt_tokens)


def encode_examples(
    stack, data: DataBundle, seed: int, max_len: int = 440, languages: list[int | None] | None = None
) -> list[tuple[list[int], list[int], int]]:
    """(decoder input ids, target ids, train utterance index) per training sequence; targets are
    IGNORE on the prefix. The prefix is the stack's static prompt; with retrieval each utterance
    gives two sequences, one per pass: the first pass's (static prompt) and the second pass's
    (retrieved-style terms), so the model still transcribes well without the terms it is later
    prompted with, and the first pass it retrieves from stays good. ``languages``: each train
    utterance's language token (multilingual checkpoints; see :func:`train_languages`)."""
    examples = [e for e in data.train if e.reference]
    if not examples:
        raise DataError("training needs train utterances with transcriptions", path=stack.recipe.data.train, fix="set data.train")
    tok = stack.processor.tokenizer
    special = special_ids(tok)
    task = TaskPrefix(stack)
    languages = languages or task.language_ids(None, range(len(examples)))
    rng = random.Random(seed)
    out = []
    for index, example in enumerate(examples):
        prompts = [stack.prompt_terms]
        if stack.retriever is not None and stack.vocabulary:
            prompts.append(_retrieval_terms(stack, example, rng))
        text = tok.encode(" " + example.reference, add_special_tokens=False)
        for terms in prompts:
            prefix = [*(prompt_token_ids(stack, terms) or []), *task.prefix(languages[index])]
            seq = (prefix + text + [special["eot"]])[:max_len]
            inputs, targets = seq[:-1], seq[1:]
            targets = [IGNORE if i < len(prefix) - 1 else t for i, t in enumerate(targets)]
            out.append((inputs, targets, index))
    return out


STATES_PER_SECOND = 50  # Whisper's encoder: 100 mel frames a second, halved by its second convolution
TRIM_MARGIN_STATES = 50


def audio_features(stack, data: DataBundle, progress: bool) -> tuple[torch.Tensor, list[int]]:
    """Log-mel features (n, 80, 3000) of the train utterances and how many encoder states hold
    each clip's audio; clips must fit in one 30 s window."""
    fe = stack.processor.feature_extractor
    feats, states = [], []
    examples = [e for e in data.train if e.reference]
    for example in tqdm(examples, desc="audio features", disable=not progress, leave=False):
        audio = load_audio(example.input)
        if len(audio) > 30 * SAMPLE_RATE:
            raise DataError("training clips must be at most 30 s", path=example.input, fix="cut it into shorter utterances")
        feats.append(fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features[0])
        states.append(-(-len(audio) * STATES_PER_SECOND // SAMPLE_RATE))
    return torch.stack(feats), states


def train_languages(stack, model, features: torch.Tensor, states: torch.Tensor | None, batch: int = 8) -> list[int | None]:
    """Each train clip's language token: the forced one, None (English-only), or with ``auto`` detected
    once from its encoder ``states`` (computed here from ``features`` when the encoder trains)."""
    task = TaskPrefix(stack)
    if not task.detects:
        return task.language_ids(None, range(len(features)))
    out: list[int | None] = []
    for i in range(0, len(features), batch):
        chunk = states[i : i + batch] if states is not None else cached_encoder_states(model, features[i : i + batch])
        out.extend(task.language_ids(chunk, list(range(i, i + len(chunk)))))
    return out


@torch.inference_mode()
def cached_encoder_states(model, features: torch.Tensor, batch: int = 8, progress: bool = False) -> torch.Tensor:
    encoder = model.get_encoder()
    states = []
    for i in tqdm(range(0, len(features), batch), desc="encoding", disable=not progress, leave=False):
        states.append(encoder(features[i : i + batch]).last_hidden_state)
    return torch.cat(states)


def train_whisper(
    model, stack, data: DataBundle, ctx: FitContext, name: str, freeze_encoder: bool, overrides=None, trim: bool = True
) -> FitReport:
    """Train ``model`` (peft-wrapped or the full Whisper) on the train split with the shared loop;
    ``trim`` (frozen encoder only): cross-attend to the clip's audio states + 1 s while training."""
    config = overrides.apply(stack.recipe.train) if overrides is not None else stack.recipe.train
    features, audio_states = audio_features(stack, data, ctx.progress)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if freeze_encoder:
        for p in base.get_encoder().parameters():
            p.requires_grad_(False)
        encoder_input = cached_encoder_states(base, features, progress=ctx.progress)
    else:
        encoder_input = features
    languages = train_languages(stack, base, features, encoder_input if freeze_encoder else None)
    encoded = encode_examples(stack, data, config.seed, languages=languages)
    pad = special_ids(stack.processor.tokenizer)["eot"]

    def collate(indices: list[int]):
        width = max(len(encoded[i][0]) for i in indices)
        ids = torch.full((len(indices), width), pad, dtype=torch.long)
        labels = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            x, y, _source = encoded[i]
            ids[row, : len(x)], labels[row, : len(y)], mask[row, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        sources = [encoded[i][2] for i in indices]
        enc = encoder_input[sources]
        if freeze_encoder and trim:
            enc = enc[:, : min(enc.shape[1], max(audio_states[i] for i in sources) + TRIM_MARGIN_STATES)]
        batch = {"enc": enc, "ids": ids, "mask": mask, "labels": labels}
        return batch, int((labels != IGNORE).sum())

    def loss_fn(m, batch) -> torch.Tensor:
        if freeze_encoder:
            out = m(encoder_outputs=(batch["enc"],), decoder_input_ids=batch["ids"], decoder_attention_mask=batch["mask"])
        else:
            out = m(input_features=batch["enc"], decoder_input_ids=batch["ids"], decoder_attention_mask=batch["mask"])
        logits = out.logits.float()
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), ignore_index=IGNORE, reduction="sum"
        )

    return trainer.train_strategy(
        model, ctx, name, lengths=[len(x) for x, _y, _s in encoded], collate=collate, loss_fn=loss_fn, config=config
    )
