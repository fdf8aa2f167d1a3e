"""The full fine-tuning strategy for text: every weight, the same loop and data path as the adapter.

Under a 16-bit ``model.dtype`` it trains in mixed precision, as torch AMP does: the weights (and so
their gradients and AdamW state) are fp32 master copies, the forward and backward passes run under
``torch.autocast`` to ``model.dtype`` (:func:`~mmadapt.modalities.text.tuning.adapter_autocast_loss`).
AdamW on bf16 weights loses the updates smaller than half a bf16 step (8 bits of mantissa): at lr
2e-4 most of them. The fp32 weights are saved; ``compose`` loads them in ``model.dtype``, as the
image modality's full denoiser does."""

from __future__ import annotations

from pathlib import Path

import torch
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
        if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
            model.float()  # fp32 master weights; the loss runs under autocast to model.dtype
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
