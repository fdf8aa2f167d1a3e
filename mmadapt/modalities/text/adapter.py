"""The adapter strategy for text: LoRA or prompt tuning through peft, saved in peft format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mmadapt.config import StrictModel, TrainOverrides
from mmadapt.errors import ArtifactError
from mmadapt.modalities.text.tuning import train_text_model
from mmadapt.models.quiet import quiet_libraries
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

ADAPTER_DIR = "adapter"


class TextAdapterConfig(StrictModel):
    method: Literal["lora", "prompt_tuning"] = "lora"
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(16, ge=1, le=4096, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names like [q_proj, v_proj]")
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="prompt tuning: virtual tokens")
    init_text: str | None = Field(None, max_length=2000, description="prompt tuning: initialise from this text")
    quantize: Literal["none", "4bit", "8bit"] = Field(
        "none", description="QLoRA: load the frozen base in 4-bit NF4 or 8-bit through bitsandbytes (CUDA, or its CPU backend)"
    )
    use_dora: bool = Field(False, description="DoRA: LoRA on the direction, a trained magnitude per output (peft use_dora)")
    use_rslora: bool = Field(False, description="rank-stabilised LoRA: scale alpha / sqrt(r) instead of alpha / r (peft use_rslora)")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="overrides of the recipe's train section")

    @model_validator(mode="after")
    def _lora_only(self):
        if self.method != "lora" and (self.quantize != "none" or self.use_dora or self.use_rslora):
            raise ValueError("quantize, use_dora and use_rslora apply to method: lora")
        return self


def peft_config(config: TextAdapterConfig, tokenizer_path: str):
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if config.method == "lora":
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=config.target_modules,
            use_dora=config.use_dora,
            use_rslora=config.use_rslora,
        )
    kwargs = {}
    if config.init_text:
        kwargs = {
            "prompt_tuning_init": PromptTuningInit.TEXT,
            "prompt_tuning_init_text": config.init_text,
            "tokenizer_name_or_path": tokenizer_path,
        }
    return PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=config.num_virtual_tokens, **kwargs)


class TextAdapterStrategy(Strategy):
    name = "adapter"
    config_model = TextAdapterConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        from peft import get_peft_model

        from mmadapt.engine.seed import seed_everything

        seed_everything(self.recipe.train.seed)  # adapter init is part of the run's determinism
        if self.config.quantize != "none":
            from peft import prepare_model_for_kbit_training

            # norms and embeddings to fp32; checkpointing is the trainer's (train.gradient_checkpointing)
            stack.model = prepare_model_for_kbit_training(stack.model, use_gradient_checkpointing=False)
        with quiet_libraries():
            model = get_peft_model(stack.model, peft_config(self.config, stack.base_info["resolved"]))
        stack.model = model  # train.eval_every scores the stack while it trains: with the adapter (prompt tuning too)
        report = train_text_model(model, stack, data, ctx, "adapter", self.config.train)
        model.save_pretrained(part_dir / ADAPTER_DIR, safe_serialization=True)
        (part_dir / "adapter.json").write_text(json.dumps(self.config.model_dump(), indent=2))
        # take the adapter back out so compose() applies exactly what was saved
        stack.model = model.unload() if self.config.method == "lora" else model.get_base_model()
        return report

    def compose(self, stack, part_dir: Path) -> None:
        from peft import PeftModel

        folder = part_dir / ADAPTER_DIR
        if not (folder / "adapter_model.safetensors").is_file():
            raise ArtifactError("adapter weights are missing", path=folder, fix="re-run the recipe")
        if stack.shared is not None:  # a base shared with other versions: this adapter is one of its named adapters
            with quiet_libraries():
                stack.adapter = stack.shared.add_adapter(folder)
            stack.model = stack.shared.model
            return
        with quiet_libraries():
            stack.model = PeftModel.from_pretrained(stack.model, str(folder), is_trainable=False)
        stack.model.eval()
