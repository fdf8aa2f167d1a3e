"""The adapter strategy for speech: LoRA on Whisper (peft), trained with the seq2seq loss."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from mmadapt.config import StrictModel, TrainOverrides
from mmadapt.errors import ArtifactError
from mmadapt.modalities.speech.tuning import train_whisper
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

ADAPTER_DIR = "adapter"
DECODER_LINEAR = r".*decoder\.layers\.\d+\.((self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
TARGETS = {
    "decoder": DECODER_LINEAR,
    "all-linear": r".*(encoder|decoder)\.layers\.\d+\.((self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)",
}


class SpeechAdapterConfig(StrictModel):
    method: str = Field("lora", pattern="^lora$", description="lora")
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("decoder", description="'decoder', 'all-linear' or module names")
    freeze_encoder: bool = Field(True, description="cache the encoder's outputs (fast on CPU); LoRA then targets the decoder")
    trim_encoder_states: bool = Field(
        True, description="frozen encoder: while training, cross-attend only to the clip's audio + 1 s (about 3x cheaper on CPU)"
    )
    train: TrainOverrides = Field(default_factory=TrainOverrides)


class SpeechAdapterStrategy(Strategy):
    name = "adapter"
    config_model = SpeechAdapterConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        from peft import LoraConfig, get_peft_model

        from mmadapt.engine.seed import seed_everything

        seed_everything(self.recipe.train.seed)
        targets = (
            TARGETS.get(self.config.target_modules, self.config.target_modules)
            if isinstance(self.config.target_modules, str)
            else self.config.target_modules
        )
        lora = LoraConfig(r=self.config.r, lora_alpha=self.config.alpha, lora_dropout=self.config.dropout, target_modules=targets)
        model = get_peft_model(stack.model, lora)
        report = train_whisper(
            model, stack, data, ctx, "adapter", self.config.freeze_encoder, self.config.train, self.config.trim_encoder_states
        )
        model.save_pretrained(part_dir / ADAPTER_DIR, safe_serialization=True)
        (part_dir / "adapter.json").write_text(json.dumps(self.config.model_dump(), indent=2))
        stack.model = model.unload()
        return report

    def compose(self, stack, part_dir: Path) -> None:
        from peft import PeftModel

        folder = part_dir / ADAPTER_DIR
        if not (folder / "adapter_model.safetensors").is_file():
            raise ArtifactError("adapter weights are missing", path=folder, fix="re-run the recipe")
        if stack.shared is not None:  # a base shared with other versions: this adapter is one of its named adapters
            stack.adapter = stack.shared.add_adapter(folder)
            stack.model = stack.shared.model
            return
        stack.model = PeftModel.from_pretrained(stack.model, str(folder), is_trainable=False)
        stack.model.eval()
