"""The image modality's own recipe sections: ``data:`` and ``inference:`` (each strategy's settings
live beside the strategy: prompt.py, retrieval.py, adapter.py, full.py)."""

from __future__ import annotations

from pydantic import Field

from mmadapt.config import StrictModel
from mmadapt.modalities.image.data import CAPTIONS_FILE
from mmadapt.modalities.image.metrics import DEFAULT_MAX_DELTA_E


class ImageEvaluator(StrictModel):
    clip: str = Field(
        "embedded:shapes-clip",
        max_length=4096,
        description="the judge CLIP of clip_i / clip_t (embedded alias, folder, hub id, open_clip:ARCH/WEIGHTS.safetensors)",
    )
    max_delta_e: float = Field(
        DEFAULT_MAX_DELTA_E, gt=0.0, le=300.0, description="palette adherence: ΔE that scores 0"
    )


class ImageData(StrictModel):
    references: str = Field(description="folder of brand reference images (train split and CLIP-I references)")
    captions: str | None = Field(
        None,
        description=f"JSONL of {{file_name, caption}} (file_name relative to this file); None = references/{CAPTIONS_FILE} if present",
    )
    palette: str | None = Field(
        None, description="palette.json: a list or object of '#RRGGBB' colours (needed by palette_adherence)"
    )
    eval: str = Field(description='JSONL of eval prompts {"id", "prompt"}')
    evaluator: ImageEvaluator = Field(default_factory=ImageEvaluator, description="how generated images are judged")


class ImageInference(StrictModel):
    steps: int = Field(25, ge=1, le=1000, description="denoising steps")
    guidance_scale: float = Field(
        5.0, ge=0.0, le=50.0, description="classifier-free guidance (the prompt strategy may override it)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="with the prompt text, seeds each image")
    height: int | None = Field(None, ge=8, le=4096, description="None = the pipeline's default resolution")
    width: int | None = Field(None, ge=8, le=4096)
    batch_size: int = Field(8, ge=1, le=256, description="prompts per pipeline call")
    negative_prompt: str | None = Field(None, max_length=2000, description="used when the prompt strategy sets none")
