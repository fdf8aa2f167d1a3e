"""Language and task for multilingual Whisper: the decoder's task prefix, language detection.

A multilingual checkpoint starts each window with ``<|startoftranscript|> <|lang|> <|task|>
<|notimestamps|>``; an English-only one (``*.en``) with ``<|startoftranscript|> <|notimestamps|>``,
as ``generate`` does. ``inference.language: auto`` detects each window's language the way
``generate`` does (transformers' ``WhisperForConditionalGeneration.detect_language``: the
language-token logits after ``<|startoftranscript|>``, from the window's encoder states), once per
window, so a retrieval second pass reuses the first pass's choice. Training with ``auto`` detects
each train clip's language once, before the loop, with the model being trained's starting weights.
"""

from __future__ import annotations

from collections.abc import Sequence

from mmadapt.errors import ModelError

AUTO = "auto"
TASKS = ("transcribe", "translate")


def language_code(value: str) -> str:
    """``auto`` or a Whisper language code (a language's English name is accepted and turned into its code);
    ValueError for anything else, which the recipe's validation prints as one line."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    code = value.strip().lower()
    if code == AUTO or code in LANGUAGES:
        return code
    if code in TO_LANGUAGE_CODE:
        return TO_LANGUAGE_CODE[code]
    raise ValueError(f"unknown language code {value!r}: use `auto` or a Whisper code such as en, fr, de, zh, ja")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_multilingual(model) -> bool:
    """Whether the checkpoint takes language and task tokens: its generation config says so
    (``is_multilingual``, set by transformers' conversions and ours), else its vocabulary size
    (English-only Whisper has 51864 tokens, multilingual 51865 or more)."""
    gen = _base(model).generation_config
    flag = getattr(gen, "is_multilingual", None)
    return bool(flag) if flag is not None else _base(model).config.vocab_size >= 51865


class TaskPrefix:
    """The task prefix of each window for a stack; detected languages are kept per window index."""

    def __init__(self, stack, ct2=None):
        cfg = stack.recipe.inference
        self.ct2 = ct2  # detect with CTranslate2 when it decodes
        self.model = stack.model
        self.tokenizer = stack.processor.tokenizer
        self.multilingual = is_multilingual(stack.model)
        self.language, self.task = cfg.language, cfg.task
        self.ids = {t: self.tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftranscript|>", "<|notimestamps|>")}
        self.detected: dict[int, int] = {}
        self.forced = self._forced_language()
        self.task_id = self._token(f"<|{self.task}|>", "inference.task") if self.multilingual else None

    def _token(self, token: str, field: str) -> int:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ModelError(f"the model's tokenizer has no {token} token ({field})", fix=f"set {field} to one the model knows")
        return int(tid)

    def _forced_language(self) -> int | None:
        if not self.multilingual:
            if self.language not in (AUTO, "en") or self.task != "transcribe":
                raise ModelError(
                    f"an English-only Whisper cannot {self.task} {self.language!r}",
                    fix="use a multilingual checkpoint (e.g. openai/whisper-small) or set inference.language: en, task: transcribe",
                )
            return None
        if self.language == AUTO:
            gen = _base(self.model).generation_config
            if not getattr(gen, "lang_to_id", None):
                raise ModelError(
                    "inference.language: auto needs the model's generation_config.lang_to_id",
                    fix="set inference.language to the audio's language code",
                )
            return None
        return self._token(f"<|{self.language}|>", "inference.language")

    @property
    def detects(self) -> bool:
        """Whether each window's language is detected (a multilingual checkpoint with ``language: auto``)."""
        return self.multilingual and self.forced is None

    def detect(self, states) -> list[int]:
        """The language token id of each window whose encoder states are ``states`` (transformers' detection)."""
        if self.ct2 is not None:
            return self.tokenizer.convert_tokens_to_ids(self.ct2.detect(states))
        import torch
        from transformers.modeling_outputs import BaseModelOutput

        with torch.inference_mode():
            return _base(self.model).detect_language(encoder_outputs=BaseModelOutput(last_hidden_state=states)).tolist()

    def language_ids(self, states, windows: Sequence[int]) -> list[int | None]:
        """The language token of each window (None for English-only), detecting those not seen yet."""
        if not self.multilingual:
            return [None] * len(windows)
        if self.forced is not None:
            return [self.forced] * len(windows)
        todo = [i for i, n in enumerate(windows) if n not in self.detected]
        if todo:
            for i, lang in zip(todo, self.detect(states[todo])):
                self.detected[windows[i]] = lang
        return [self.detected[n] for n in windows]

    def prefix(self, language_id: int | None) -> list[int]:
        """``<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>``."""
        middle = [] if not self.multilingual else [language_id, self.task_id]
        return [self.ids["<|startoftranscript|>"], *middle, self.ids["<|notimestamps|>"]]

    def prefixes(self, states, windows: Sequence[int]) -> list[list[int]]:
        return [self.prefix(lang) for lang in self.language_ids(states, windows)]

    def generate_kwargs(self, prefix: Sequence[int]) -> dict:
        """``language`` and ``task`` for ``generate`` (beam search) from a prefix built here."""
        if not self.multilingual:
            return {}
        start = list(prefix).index(self.ids["<|startoftranscript|>"])
        return {"language": self.tokenizer.convert_ids_to_tokens(prefix[start + 1]), "task": self.task}
