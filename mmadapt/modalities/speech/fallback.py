"""Temperature fallback, as openai-whisper decodes (``transcribe.decode_with_fallback``).

A window is decoded greedily first; when its text is degenerate — gzip compression ratio above
``compression_ratio_threshold`` (2.4: a repetition loop compresses well) or mean log-probability
of its tokens below ``logprob_threshold`` (-1.0) — it is decoded again by sampling at the next
temperature (0.2, 0.4 … 1.0) until it passes or the temperatures run out (the last is kept, as
openai-whisper does). Sampling is seeded (``inference.seed`` + the temperature's step), so a run
repeats exactly. One sample per temperature (openai-whisper draws ``best_of`` 5 and keeps the most
likely; on a CPU that is five decodes per failed window). The mean log-probability divides the sum
by the token count + 1, as openai-whisper does (the end-of-text token counts).

A request's own ``temperature`` > 0 (serve's transcription ``temperature``, a ``SpeechRequest``'s) is
openai-whisper's ``transcribe(temperature=t)`` with one temperature: each window sampled once at it,
no fallback, with a generator of its own (:func:`window_generator`, :func:`sample_rows`) so a seeded
request gives the same transcript whatever it is batched with.
"""

from __future__ import annotations

import zlib

from pydantic import Field

from mmadapt.config import StrictModel


class FallbackConfig(StrictModel):
    """`inference.fallback` of the speech modality."""

    enabled: bool = Field(
        False, description="re-decode degenerate windows at higher temperatures (off: on tiny.en one sample per temperature "
        "raised the eval WER 0.686 -> 0.801, see README)"
    )
    temperatures: list[float] = Field(
        [0.2, 0.4, 0.6, 0.8, 1.0], min_length=1, max_length=10, description="tried in order after greedy (0.0)"
    )
    compression_ratio_threshold: float = Field(2.4, gt=0.0, description="above: degenerate (openai-whisper's 2.4)")
    logprob_threshold: float = Field(-1.0, le=0.0, description="mean token log-prob below: degenerate (openai-whisper's -1.0)")
    seed: int = Field(0, ge=0, description="seeds the sampling at each temperature")


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib-compressed bytes), openai-whisper's ``get_compression_ratio``."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def degenerate(text: str, logprob_sum: float, n_tokens: int, config: FallbackConfig) -> bool:
    """Whether a decoded window needs the next temperature."""
    if compression_ratio(text) > config.compression_ratio_threshold:
        return True
    return logprob_sum / (n_tokens + 1) < config.logprob_threshold


def decode_with_fallback(decode, rows: list[int], text_of, config: FallbackConfig) -> tuple[dict[int, list[int]], dict[int, float]]:
    """Decode ``rows`` (indices into the batch) greedily, then re-decode the degenerate ones.

    ``decode(rows, temperature, seed) -> (token ids per row, log-prob sum per row)``; ``text_of(ids)``
    the text the compression ratio is taken of. Returns the kept ids and the temperature of each row.
    """
    ids, temps = {}, {}
    todo = list(rows)
    for step, temperature in enumerate([0.0, *(config.temperatures if config.enabled else [])]):
        if not todo:
            break
        tokens, sums = decode(todo, temperature, config.seed + step)
        again = []
        for row, toks, total in zip(todo, tokens, sums):
            ids[row], temps[row] = toks, temperature
            if config.enabled and degenerate(text_of(toks), total, len(toks), config):
                again.append(row)
        todo = again
    return ids, temps


def window_generator(seed: int | None, part: int, device=None):
    """The generator of one sampled window: seeded by the request's ``seed`` and the window's place in
    its file (``part``), so each window of a long file draws its own stream; no seed: at random."""
    import secrets

    import torch

    value = (seed * 1_000_003 + part) % 2**63 if seed is not None else secrets.randbits(63)
    return torch.Generator(device=device or "cpu").manual_seed(value)


def sample_rows(logits, choice, samplers):
    """``choice`` (the greedy tokens, one per row) with each row that has a ``(temperature, generator)``
    in ``samplers`` drawn instead from softmax(logits / temperature) with its own generator."""
    import torch

    for row, sampler in enumerate(samplers):
        if sampler is not None:
            temperature, generator = sampler
            choice[row] = torch.multinomial(torch.softmax(logits[row] / temperature, -1), 1, generator=generator)[0]
    return choice
