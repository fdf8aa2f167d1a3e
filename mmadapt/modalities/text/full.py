"""The full fine-tuning strategy for text: every weight, the same loop and data path as the adapter."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from mmadapt.config import StrictModel, TrainOverrides
from mmadapt.errors import ArtifactError
from mmadapt.modalities.text.tuning import train_text_model
from mmadapt.models.quiet import quiet_libraries
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

MODEL_DIR = "model"


class TextFullConfig(StrictModel):
    freeze_embeddings: bool = Field(False, description="keep the token embeddings (and a tied LM head) fixed")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="overrides of the recipe's train section")


class TextFullStrategy(Strategy):
    name = "full"
    config_model = TextFullConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        model = stack.model
        for param in model.parameters():
            param.requires_grad_(True)
        if self.config.freeze_embeddings:
            model.get_input_embeddings().weight.requires_grad_(False)
        report = train_text_model(model, stack, data, ctx, "full", self.config.train)
        with quiet_libraries():
            model.save_pretrained(part_dir / MODEL_DIR, safe_serialization=True)
        stack.tokenizer.save_pretrained(part_dir / MODEL_DIR)
        return report

    def compose(self, stack, part_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        from mmadapt.modalities.text.model import torch_dtype

        folder = part_dir / MODEL_DIR
        if not (folder / "config.json").is_file():
            raise ArtifactError("full model weights are missing", path=folder, fix="re-run the recipe")
        with quiet_libraries():
            stack.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(self.recipe.model.dtype), use_safetensors=True)
        stack.model.eval()
