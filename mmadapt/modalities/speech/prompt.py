"""The prompt strategy for speech: the domain vocabulary as Whisper's decoder prompt.

Whisper conditions on up to 224 previous-text tokens (``<|startofprev|>`` ...). The
vocabulary goes there in its file order until ``max_prompt_tokens`` is reached; terms
past the budget are left out (the retrieval strategy picks per utterance instead).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator

from mmadapt.config import StrictModel
from mmadapt.engine.artifact import read_part_json
from mmadapt.errors import DataError
from mmadapt.modalities.speech.boost import BoostConfig
from mmadapt.modalities.speech.predict import DEFAULT_TEMPLATE, check_vocabulary, fit_terms
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

PROMPT_FILE = "prompt.json"


class SpeechPromptConfig(StrictModel):
    template: str = Field(DEFAULT_TEMPLATE, max_length=2000, description="must contain {terms}")
    max_prompt_tokens: int = Field(200, ge=8, le=223, description="Whisper's prompt budget is 223 tokens")
    boost: BoostConfig | None = Field(None, description="bias decoding towards the prompt's terms (boost.py)")

    @field_validator("template")
    @classmethod
    def _has_terms(cls, value: str) -> str:
        if "{terms}" not in value:
            raise ValueError("template must contain {terms}")
        return value


class SpeechPromptStrategy(Strategy):
    name = "prompt"
    config_model = SpeechPromptConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        if not stack.vocabulary:
            raise DataError("the prompt strategy needs a vocabulary", path=self.recipe.source, fix="set data.vocabulary")
        stack.prompt_template, stack.max_prompt_tokens = self.config.template, self.config.max_prompt_tokens
        check_vocabulary(stack, stack.vocabulary, self.recipe.path(self.recipe.data.vocabulary))  # a term alone past the budget
        terms = fit_terms(stack, stack.vocabulary, self.config.max_prompt_tokens)
        record = {
            "template": self.config.template,
            "max_prompt_tokens": self.config.max_prompt_tokens,
            "terms": terms,
            "left_out": len(stack.vocabulary) - len(terms),
            "boost": self.config.boost.model_dump() if self.config.boost else None,
        }
        (part_dir / PROMPT_FILE).write_text(json.dumps(record, indent=2, ensure_ascii=False))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        record = read_part_json(part_dir, PROMPT_FILE)
        stack.prompt_template = record["template"]
        stack.max_prompt_tokens = record["max_prompt_tokens"]
        stack.prompt_terms = record["terms"]
        if record.get("boost"):
            stack.boost = BoostConfig.model_validate(record["boost"])
            stack.boost_passes.add("static")
