"""The prompt strategy for images: a brand style template, a negative prompt and a guidance knob.

Nothing is learned: the template (``"{prompt}, zentrix style"``) wraps every request, the
negative prompt steers away from what the brand never shows, and ``guidance_scale`` (when
set) replaces the inference default. Saved as ``prompt.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator

from mmadapt.config import StrictModel
from mmadapt.errors import ArtifactError
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

PROMPT_FILE = "prompt.json"


class ImagePromptConfig(StrictModel):
    template: str = Field("{prompt}, brand style", max_length=2000, description="must contain {prompt}")
    negative_prompt: str | None = Field(None, max_length=2000, description="what the brand never shows")
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0, description="None = inference.guidance_scale")

    @field_validator("template")
    @classmethod
    def _has_prompt(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("template must contain {prompt}")
        try:
            value.format(prompt="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"template may hold only the {{prompt}} field ({exc})") from None
        return value


class ImagePromptStrategy(Strategy):
    name = "prompt"
    config_model = ImagePromptConfig
    trains = False

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        (part_dir / PROMPT_FILE).write_text(json.dumps(self.config.model_dump(), indent=2, ensure_ascii=False))
        return FitReport()

    def compose(self, stack, part_dir: Path) -> None:
        try:
            config = ImagePromptConfig.model_validate_json((part_dir / PROMPT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ArtifactError(
                f"cannot read prompt.json: {str(exc).splitlines()[0]}", path=part_dir, fix="re-run the recipe"
            ) from None
        stack.template = config.template
        stack.negative_prompt = config.negative_prompt
        stack.guidance_scale = config.guidance_scale
