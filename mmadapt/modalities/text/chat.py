"""Chats through the tokenizer's own chat template: the recipe's override, conversations under the
stack's prompt, and token labels that cover every assistant turn and nothing else.

The labels come from rendering prefixes (the way LLaMA-Factory's ``encode_multiturn`` does): for
each assistant turn, the conversation up to it with the generation prompt marks where the reply
starts, and the conversation through it where the reply ends (its end-of-turn token included, so
the model learns to stop). The full conversation is tokenised once and a token is labelled when
its characters start inside a reply, so merges across the boundary cannot shift the mask.
transformers' ``return_assistant_tokens_mask`` would do this only for templates that carry
``{% generation %}`` markers, which most shipped templates (SmolLM2, Llama 3, Gemma) do not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmadapt.engine import validate as v
from mmadapt.errors import DataError, RequestError
from mmadapt.modalities.text import formats

if TYPE_CHECKING:  # pragma: no cover
    from mmadapt.recipe import Recipe

IGNORE = -100
TEMPLATE_SUFFIXES = (".jinja", ".j2", ".jinja2", ".txt")


def template_text(recipe: Recipe, key: str = "chat_template") -> str | None:
    """The recipe's ``data.chat_template`` (or ``data.fallback_chat_template``): a file's text when it
    names one, else the string itself."""
    value = recipe.data.chat_template if key == "chat_template" else recipe.data.fallback_chat_template
    if value is None:
        return None
    if "{%" not in value and "{{" not in value and value.endswith(TEMPLATE_SUFFIXES):
        path = Path(value)
        if not path.is_absolute():
            found = [p for p in (Path.cwd() / value, *(d / value for d in Path(recipe.source or ".").resolve().parents)) if p.is_file()]
            path = found[0] if found else path
        if not path.is_file():
            raise DataError(f"data.{key}: {value} not found", path=recipe.source, fix="give a Jinja string or an existing file")
        return path.read_text(encoding="utf-8")
    return value


def check_template(recipe: Recipe) -> list[v.Problem]:
    """An error when an override does not parse as Jinja (the sandbox transformers renders in)."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    where = recipe.source or "recipe"
    problems = []
    for key in ("chat_template", "fallback_chat_template"):
        try:
            text = template_text(recipe, key)
            if text is not None:
                ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).parse(text)
        except DataError as exc:
            problems.append(v.Problem.from_error(exc, where))
        except TemplateSyntaxError as exc:
            problems.append(v.error(where, None, f"data.{key} does not parse (template line {exc.lineno}: {exc.message})", "fix the Jinja"))
    return problems


@dataclass(frozen=True)
class TextRequest:
    """A question or conversation with its own generation settings (serve's ``max_tokens``,
    ``temperature``, ``top_p``, ``seed``; None: the recipe's ``inference``). ``choice`` is its index
    among a request's ``n`` answers, so seeded answers differ from each other and each is
    reproducible whatever batch it is generated in (:class:`~mmadapt.modalities.text.predict.RowSampler`)."""

    item: str | list[dict[str, str]]
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    choice: int = 0


def history_of(item: Any) -> list[dict[str, str]]:
    """An input as chat turns: a question is one user turn; a conversation is itself."""
    if isinstance(item, TextRequest):
        item = item.item
    return [{"role": "user", "content": item}] if isinstance(item, str) else list(item)


def last_user(history: Sequence[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(history) if m["role"] == "user"), "")


def request_conversation(messages: Any) -> str | list[dict[str, str]]:
    """An OpenAI ``messages`` list as one predictor input, parsed by the data files' parser
    (:func:`~mmadapt.modalities.text.formats.check_conversation` under its ``REQUEST`` rules; an error
    is a RequestError: 400). A lone user message is its question, as a question from a data file is;
    with a system turn or earlier turns, the conversation (``{role, content}``; the system and
    developer turns joined into one first turn), which ends with the user turn to answer:
    :func:`build_chat` renders it under the stack's prompt through the chat template and retrieval
    queries its last user turn after ``retrieval.history_turns`` turns (:func:`retrieval_query`)."""
    turns, error, fix = formats.check_conversation(messages, formats.REQUEST)
    if error is not None:
        raise RequestError(error, fix=fix)
    return turns[0]["content"] if len(turns) == 1 else turns


def retrieval_query(item: Any, history_turns: int) -> str:
    """What retrieval searches with: the last user turn, after the ``history_turns`` turns before it."""
    turns = [m for m in history_of(item) if m["role"] != "system"]
    last = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=len(turns) - 1)
    return "\n".join(m["content"] for m in turns[max(0, last - history_turns) : last + 1])


def build_chat(stack, item: Any, passages: Sequence[str] = ()) -> list[dict[str, str]]:
    """The chat for one input under the stack's prompt: the conversation's own system turn (else the
    prompt's), the few-shot turns, every user turn through the prompt's template, and the retrieved
    passages around the last user turn. A question alone gives what ``build_messages`` always gave."""
    history = history_of(item)
    system = history[0]["content"] if history and history[0]["role"] == "system" else stack.system
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    for shot_q, shot_a in stack.few_shot:
        messages.append({"role": "user", "content": stack.template.format(question=shot_q)})
        messages.append({"role": "assistant", "content": shot_a})
    turns = [m for m in history if m["role"] != "system"]
    last = max((i for i, m in enumerate(turns) if m["role"] == "user"), default=-1)
    for i, m in enumerate(turns):
        content = m["content"]
        if m["role"] == "user":
            content = stack.template.format(question=content)
            if i == last and passages:
                content = stack.context_template.format(context="\n\n".join(passages), question=content)
        messages.append({"role": m["role"], "content": content})
    return messages


def render(tokenizer, messages: list[dict[str, str]], *, generation: bool, where: str = "") -> str:
    """The template's text for ``messages``; a template that raises is one DataError naming the input."""
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError, templates raise_exception(...)
        raise DataError(
            f"the chat template does not render {where or 'a conversation'} ({type(exc).__name__}: {exc})"[:400],
            path=where or None,
            fix="fix the conversation or set data.chat_template",
        ) from None


def assistant_spans(tokenizer, messages: list[dict[str, str]], where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """(the rendered conversation, the character span of every assistant reply in it)."""
    full = render(tokenizer, messages, generation=False, where=where)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = render(tokenizer, messages[:i], generation=True, where=where)
        end = render(tokenizer, messages[: i + 1], generation=False, where=where)
        if not (full.startswith(start) and full.startswith(end) and len(end) > len(start)):
            raise DataError(
                f"the chat template renders {where or 'a conversation'} differently from its own prefixes:"
                " assistant turns cannot be found for the loss mask",
                fix="set data.chat_template to a template whose turns only append",
            )
        spans.append((len(start), len(end)))
    return full, spans


def encode_conversation(tokenizer, messages: list[dict[str, str]], max_len: int, where: str = "") -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels are the ids on assistant reply tokens and IGNORE elsewhere;
    a conversation longer than ``max_len`` keeps its last ``max_len`` tokens (the last reply)."""
    text, spans = assistant_spans(tokenizer, messages, where)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        tid if any(s <= start < e for s, e in spans) and end > start else IGNORE
        for tid, (start, end) in zip(ids, enc["offset_mapping"])
    ]
    return ids[-max_len:], labels[-max_len:]
