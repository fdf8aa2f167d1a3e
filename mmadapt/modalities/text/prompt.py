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
from mmadapt.modalities.text.chat import build_chat, history_of, last_user
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
    """The chat for one question under the stack's prompt and retrieved passages (see chat.build_chat,
    which also takes whole conversations)."""
    return build_chat(stack, question, passages)


class TextPromptStrategy(Strategy):
    name = "prompt"
    config_model = PromptConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        shots = []
        if self.config.few_shot:
            pool = [e for e in data.train if e.reference]
            rng = random.Random(self.recipe.train.seed)
            picked = rng.sample(pool, min(self.config.few_shot, len(pool)))
            shots = [[last_user(history_of(e.input)), e.reference] for e in picked]  # a conversation: its last exchange
        record = {"system": self.config.system, "template": self.config.template, "few_shot": shots}
        (part_dir / PROMPT_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        record = read_part_json(part_dir, PROMPT_FILE)
        stack.system = record["system"]
        stack.template = record["template"]
        stack.few_shot = [tuple(pair) for pair in record["few_shot"]]
