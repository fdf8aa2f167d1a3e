"""The full fine-tuning strategy for images: every weight of the denoiser, the same loop and loss
as the LoRA. The VAE and text encoder stay frozen (in ``model.dtype``); the denoiser trains in float32
and runs in ``model.dtype`` once composed. Saved as the denoiser's own folder
(``model/unet/`` with ``config.json`` + ``diffusion_pytorch_model.safetensors``)."""

from __future__ import annotations

from pathlib import Path

from mmadapt.errors import ArtifactError
from mmadapt.modalities.image.tuning import DiffusionTuning, train_denoiser, write_loss_log
from mmadapt.protocols import DataBundle, FitContext, FitReport, Strategy

MODEL_DIR = "model"


class ImageFullConfig(DiffusionTuning):
    pass


class ImageFullStrategy(Strategy):
    name = "full"
    config_model = ImageFullConfig
    trains = True

    def fit(self, stack, data: DataBundle, part_dir: Path, ctx: FitContext) -> FitReport:
        denoiser = stack.unet
        denoiser.requires_grad_(True)
        report = train_denoiser(denoiser, stack, data, ctx, "full", self.config)
        denoiser.requires_grad_(False)
        denoiser.save_pretrained(part_dir / MODEL_DIR / stack.denoiser, safe_serialization=True)
        write_loss_log(part_dir, report)
        return report

    def compose(self, stack, part_dir: Path) -> None:
        folder = part_dir / MODEL_DIR / stack.denoiser
        if not (folder / "config.json").is_file():
            raise ArtifactError("full denoiser weights are missing", path=folder, fix="re-run the recipe")
        cls = type(stack.unet)
        model = cls.from_pretrained(folder, dtype=stack.dtype, use_safetensors=True).eval()  # trained in float32, run in model.dtype
        setattr(stack.pipe, stack.denoiser, model)
        stack.pipe.register_modules(**{stack.denoiser: model})
