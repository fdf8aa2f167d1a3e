"""The full fine-tuning strategy for speech: Whisper's weights, the same loop and data as LoRA.

By default the encoder stays frozen and cached (every decoder weight trains): on a CPU
the encoder's 30-second input dominates the cost. ``freeze_encoder: false`` trains
every weight of the model.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mmadapt.config import StrictModel, TrainOverrides
from mmadapt.errors import ArtifactError
from mmadapt.modalities.speech.tuning import train_whisper
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

MODEL_DIR = "model"


class SpeechFullConfig(StrictModel):
    freeze_encoder: bool = Field(True, description="train the decoder only (fast on CPU); false = every weight")
    trim_encoder_states: bool = Field(
        True, description="frozen encoder: while training, cross-attend only to the clip's audio + 1 s (about 3x cheaper on CPU)"
    )
    train: TrainOverrides = Field(default_factory=TrainOverrides)


class SpeechFullStrategy(Strategy):
    name = "full"
    config_model = SpeechFullConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        for param in stack.model.parameters():
            param.requires_grad_(True)
        report = train_whisper(
            stack.model, stack, data, ctx, "full", self.config.freeze_encoder, self.config.train, self.config.trim_encoder_states
        )
        stack.model.save_pretrained(part_dir / MODEL_DIR, safe_serialization=True)
        stack.processor.save_pretrained(part_dir / MODEL_DIR)
        return report

    def compose(self, stack, part_dir: Path) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration

        folder = part_dir / MODEL_DIR
        if not (folder / "config.json").is_file():
            raise ArtifactError("full model weights are missing", path=folder, fix="re-run the recipe")
        stack.model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
        stack.model.eval()
