"""The prompt strategy for text: system prompt, question template and few-shot examples.

``build_messages`` is the one place a chat is assembled, used by the predictor and by
training alike, so an adapter learns from exactly the prompts it will be served with.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from pydantic import Field, field_validator

from mmadapt.config import StrictModel
from mmadapt.engine.artifact import read_part_json
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

PROMPT_FILE = "prompt.json"


class PromptConfig(StrictModel):
    system: str = Field("You are a helpful assistant. Answer briefly.", max_length=20_000)
    template: str = Field("{question}", max_length=20_000, description="user turn; must contain {question}")
    few_shot: int = Field(0, ge=0, le=32, description="train Q/A pairs shown as earlier turns")

    @field_validator("template")
    @classmethod
    def _has_question(cls, value: str) -> str:
        if "{question}" not in value:
            raise ValueError("template must contain {question}")
        try:
            value.format(question="q")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template has a placeholder other than {{question}} ({exc})") from None
        return value


def build_messages(stack, question: str, passages: Sequence[str] = ()) -> list[dict[str, str]]:
    """The chat for one question under the stack's prompt and retrieved passages."""
    messages: list[dict[str, str]] = []
    if stack.system:
        messages.append({"role": "system", "content": stack.system})
    for shot_q, shot_a in stack.few_shot:
        messages.append({"role": "user", "content": stack.template.format(question=shot_q)})
        messages.append({"role": "assistant", "content": shot_a})
    user = stack.template.format(question=question)
    if passages:
        context = "\n\n".join(passages)
        user = stack.context_template.format(context=context, question=user)
    messages.append({"role": "user", "content": user})
    return messages


class TextPromptStrategy(Strategy):
    name = "prompt"
    config_model = PromptConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        shots = []
        if self.config.few_shot:
            pool = [e for e in data.train if e.reference]
            rng = random.Random(self.recipe.train.seed)
            shots = [[e.input, e.reference] for e in rng.sample(pool, min(self.config.few_shot, len(pool)))]
        record = {"system": self.config.system, "template": self.config.template, "few_shot": shots}
        (part_dir / PROMPT_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        record = read_part_json(part_dir, PROMPT_FILE)
        stack.system = record["system"]
        stack.template = record["template"]
        stack.few_shot = [tuple(pair) for pair in record["few_shot"]]
