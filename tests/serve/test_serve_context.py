"""A chat request against the served model's context length (the tiny LM's 512 positions), with the
real ``openai`` client: prompt + ``max_tokens`` past it is OpenAI's 400 naming the field and the
numbers; a prompt alone past it is a 400 on ``messages``; without ``max_tokens`` the recipe's default
is cut to what fits."""

from __future__ import annotations

import pytest

from tests.conftest import EVAL, TRAIN, write_jsonl
from tests.serve.conftest import served_recipe

openai = pytest.importorskip("openai")
QUESTION = "What port does the gateway listen on?"
WINDOW = 512  # tests/fixtures/tiny.py: max_position_embeddings of the tiny Llama


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_lm):

    root = tmp_path_factory.mktemp("serve-context")
    write_jsonl(root / "train.jsonl", TRAIN)
    write_jsonl(root / "eval.jsonl", EVAL)
    raw = {
        "name": "tiny-text",
        "modality": "text",
        "base_model": str(tiny_lm),
        "data": {"train": str(root / "train.jsonl"), "eval": str(root / "eval.jsonl")},
        "strategies": {"prompt": {"system": "Answer briefly."}},
        "inference": {"max_new_tokens": 8},
        "eval": {"bootstrap": 10, "latency_samples": 1},
        "output_dir": str(root / "runs"),
    }
    with served_recipe(raw, root) as served:
        yield served


def _ask(served, content: str = QUESTION, **extra):
    return served["client"].chat.completions.create(model="tiny-text", messages=[{"role": "user", "content": content}], **extra)


def _error(served, content: str = QUESTION, **extra) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        _ask(served, content, **extra)
    assert info.value.status_code == 400
    return info.value.body


def test_max_tokens_past_the_context_is_openais_400_naming_the_field_and_the_numbers(served):
    prompt = _ask(served).usage.prompt_tokens  # what the predictor counted for this prompt
    fits = _ask(served, max_tokens=WINDOW - prompt)  # exactly the context: answered
    assert fits.usage.prompt_tokens == prompt
    for field in ("max_tokens", "max_completion_tokens"):
        body = _error(served, **{field: WINDOW - prompt + 1})  # one token more (both under --max-tokens 4096)
        assert body["param"] == field and body["code"] == "context_length_exceeded" and body["type"] == "invalid_request_error"
        assert body["message"].startswith(
            f"This model's maximum context length is {WINDOW} tokens. However, you requested {WINDOW + 1} tokens "
            f"({prompt} in the messages, {WINDOW - prompt + 1} in the completion: `{field}`). Please reduce the length"
        )
    assert _error(served, max_tokens=4000)["param"] == "max_tokens"
    assert _error(served, max_tokens=5000)["param"] == "max_tokens"  # the server's own --max-tokens, now with its param too


def test_a_prompt_past_the_context_is_400_on_messages_and_the_default_is_cut_to_fit(served):
    from mmadapt.modalities.text.predict import prompt_tokens

    stack = served["app"].state.pool.cached(served["version"]).artifact.stack
    words = "gateway port plan " * 200  # ~600 tokens, well under the 32000-character limit
    body = _error(served, words)
    assert body["param"] == "messages" and body["code"] == "context_length_exceeded"
    assert f"maximum context length is {WINDOW} tokens" in body["message"] and "your messages resulted in" in body["message"]
    # a prompt 2 tokens short of the context: the recipe's max_new_tokens (8) is cut to 2
    base = prompt_tokens(stack, QUESTION)
    long = " ".join([QUESTION, *(["gateway"] * (WINDOW - 2 - base))])
    while prompt_tokens(stack, long) > WINDOW - 2:
        long = long.rsplit(" ", 1)[0]
    left = WINDOW - prompt_tokens(stack, long)
    assert 1 <= left <= 8
    answer = _ask(served, long)
    assert answer.usage.prompt_tokens == WINDOW - left
    assert answer.usage.completion_tokens <= left and answer.choices[0].finish_reason == "length"
