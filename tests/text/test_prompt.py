"""build_messages: the one place a chat is assembled (system, few-shot turns, passages)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mmadapt.modalities.text.prompt import PromptConfig, build_messages


class FakeStack:  # the attributes build_messages reads (a plain object, not a mocked library)
    def __init__(self, system=None, template="{question}", few_shot=(), context_template="C: {context} | {question}"):
        self.system, self.template, self.few_shot, self.context_template = system, template, list(few_shot), context_template


def test_question_only():
    assert build_messages(FakeStack(), "Which port?") == [{"role": "user", "content": "Which port?"}]


def test_system_few_shot_and_passages():
    stack = FakeStack(system="Be brief.", template="Q: {question}", few_shot=[("q1?", "a1"), ("q2?", "a2")])
    messages = build_messages(stack, "Which port?", ["[Ports] 7443", "[Pricing] $149"])
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q: q1?"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "Q: q2?"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "C: [Ports] 7443\n\n[Pricing] $149 | Q: Which port?"},
    ]


def test_few_shot_turns_get_no_passages():
    stack = FakeStack(few_shot=[("q1?", "a1")])
    messages = build_messages(stack, "q?", ["ctx"])
    assert messages[0]["content"] == "q1?" and messages[-1]["content"] == "C: ctx | q?"


@pytest.mark.parametrize("template", ["Q: {q}", "no placeholder", "{question} {other}", "{question} {"])
def test_template_must_hold_question_only(template):
    with pytest.raises(ValidationError):
        PromptConfig(template=template)


def test_prompt_config_defaults():
    config = PromptConfig()
    assert config.template == "{question}" and config.few_shot == 0 and config.system
