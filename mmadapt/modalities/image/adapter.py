"""The adapter strategy for images: a brand-style LoRA on the denoiser's attention projections.

LoRA (peft, through diffusers' ``add_adapter``) on the attention projections of the
denoiser's family (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every UNet attention
block; for SD3/Flux also the joint attention's ``add_*_proj`` and ``to_add_out``; ``[all]``
= every linear layer; :mod:`mmadapt.modalities.image.families`), trained with the
noise-prediction loss on the references and their captions in the shared loop
(:mod:`mmadapt.modalities.image.tuning`). Saved in the diffusers LoRA format
(``pytorch_lora_weights.safetensors`` via ``save_lora_weights``), loaded with
``pipe.load_lora_weights``; ``scale`` weighs it at inference (0 = the base model).
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from mmadapt.errors import ArtifactError
from mmadapt.modalities.image.families import family_of, lora_targets
from mmadapt.modalities.image.tuning import DiffusionTuning, train_denoiser, write_loss_log
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

ADAPTER_DIR = "adapter"
ADAPTER_NAME = "brand"
WEIGHTS = "pytorch_lora_weights.safetensors"


class ImageAdapterConfig(DiffusionTuning):
    method: str = Field("lora", pattern="^lora$", description="lora")
    r: int = Field(8, ge=1, le=1024, description="LoRA rank")
    alpha: int = Field(8, ge=1, le=4096, description="LoRA alpha (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="denoiser module names; None = the family's attention projections; [all] = every linear layer"
    )
    scale: float = Field(1.0, ge=0.0, le=4.0, description="LoRA weight at inference")


class ImageAdapterStrategy(Strategy):
    name = "adapter"
    config_model = ImageAdapterConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        import torch
        from diffusers.training_utils import cast_training_params
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict

        from mmadapt.engine.seed import seed_everything

        seed_everything(self.recipe.train.seed)  # the LoRA init is part of the run's determinism
        denoiser = stack.unet
        denoiser.requires_grad_(False)
        lora = LoraConfig(
            r=self.config.r,
            lora_alpha=self.config.alpha,
            lora_dropout=self.config.dropout,
            init_lora_weights="gaussian",
            target_modules=lora_targets(denoiser, family_of(stack, self.config), self.config.target_modules),
        )
        denoiser.add_adapter(lora, adapter_name=ADAPTER_NAME)
        cast_training_params(denoiser, dtype=torch.float32)  # the base may be model.dtype; the LoRA trains in float32
        try:
            report = train_denoiser(denoiser, stack, data, ctx, "adapter", self.config)
            layers = get_peft_model_state_dict(denoiser, adapter_name=ADAPTER_NAME)
            if stack.denoiser == "unet":  # the UNet loaders' key names; transformers keep peft's (as diffusers' scripts)
                layers = convert_state_dict_to_diffusers(layers)
            folder = part_dir / ADAPTER_DIR
            type(stack.pipe).save_lora_weights(folder, **{f"{stack.denoiser}_lora_layers": layers}, safe_serialization=True)
        finally:
            denoiser.delete_adapters(ADAPTER_NAME)  # compose() applies exactly what was saved
        (part_dir / "adapter.json").write_text(json.dumps(self.config.model_dump(), indent=2))
        write_loss_log(part_dir, report)
        return report

    def compose(self, stack, part_dir: Path) -> None:
        folder = part_dir / ADAPTER_DIR
        if not (folder / WEIGHTS).is_file():
            raise ArtifactError("adapter weights are missing", path=folder, fix="re-run the recipe")
        try:
            scale = json.loads((part_dir / "adapter.json").read_text())["scale"]
        except (OSError, ValueError, KeyError):
            scale = self.config.scale
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # "no LoRA keys for the text encoder": it has none by design
        try:
            stack.pipe.load_lora_weights(str(folder), weight_name=WEIGHTS, adapter_name=ADAPTER_NAME)
        finally:
            diffusers_logging.set_verbosity(level)
        stack.pipe.set_adapters([ADAPTER_NAME], adapter_weights=[float(scale)])
        stack.lora_scale = float(scale)


LORA_FORMATS = ("diffusers", "kohya")
KOHYA_WEIGHTS = "lora_kohya.safetensors"


def export_lora(stack, part_dir: Path, out_dir: Path, fmt: str) -> list[str]:
    """Write the trained LoRA of ``part_dir`` into ``out_dir`` as ``fmt``; return the file names.

    ``diffusers``: the file ``pipe.load_lora_weights`` reads (as saved). ``kohya``: the
    ``lora_unet_*`` layout of kohya sd-scripts / ComfyUI / A1111, by diffusers' own converters
    (``convert_unet_state_dict_to_peft`` then ``convert_state_dict_to_kohya``); UNet LoRAs only
    (SD 1.x/2.x, SDXL) — diffusers' kohya converter has no mapping for SD3/Flux transformers.
    """
    import shutil

    from safetensors.torch import load_file, save_file

    source = part_dir / ADAPTER_DIR / WEIGHTS
    if fmt not in LORA_FORMATS:
        raise ArtifactError(f"unknown LoRA export format {fmt!r}", fix=f"use --format {' or '.join(LORA_FORMATS)}")
    if not source.is_file():
        raise ArtifactError("adapter weights are missing", path=source.parent, fix="re-run the recipe")
    if fmt == "diffusers":
        shutil.copyfile(source, out_dir / WEIGHTS)
        return [WEIGHTS]
    if stack.denoiser != "unet":
        raise ArtifactError(
            f"the kohya layout covers UNet LoRAs (SD 1.x/2.x, SDXL), not a {type(stack.unet).__name__} LoRA",
            path=source,
            fix="use --format diffusers (diffusers and ComfyUI load it for SD3 / Flux)",
        )
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft

    peft_keys = convert_unet_state_dict_to_peft(load_file(str(source)))
    save_file(convert_state_dict_to_kohya(peft_keys), str(out_dir / KOHYA_WEIGHTS), metadata={"format": "pt"})
    return [KOHYA_WEIGHTS]


def fuse_and_save(stack, out_dir: Path) -> list[str]:
    """Save the composed pipeline as one folder, a loaded LoRA fused into the denoiser at its scale."""
    merged = []
    if stack.lora_scale is not None:
        stack.pipe.fuse_lora(components=[stack.denoiser], adapter_names=[ADAPTER_NAME])
        stack.pipe.unload_lora_weights()
        merged.append(f"lora ({ADAPTER_NAME}, scale {stack.lora_scale:g}) fused into the {stack.denoiser}")
    stack.pipe.save_pretrained(out_dir, safe_serialization=True)
    return merged
