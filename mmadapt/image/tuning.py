"""Diffusion training data for the shared loop: the noise-prediction loss on the brand references.

The VAE and text encoder are frozen, so each reference's latent (posterior mean x the
VAE's own ``scaling_factor``) and its caption's text embedding are computed once. A
reference without a caption is auto-captioned with ``auto_caption`` (the style token);
``caption_dropout`` of the captions become the empty prompt, so classifier-free guidance
keeps an unconditional branch. Per micro-batch ``collate`` draws the noise and timesteps
from torch's global generator, which the trainer seeds and checkpoints (a resumed run
draws what an uninterrupted one would). The target is the noise (``epsilon``), the
velocity (``v_prediction``) or the clean latent (``sample``), per the scheduler config;
the loss is the per-example MSE, summed (the trainer divides by the step's examples).
"""

from __future__ import annotations

import torch
from pydantic import Field

from mmadapt.core import trainer
from mmadapt.core.strategy import DataBundle, FitContext, FitReport, StrictModel
from mmadapt.errors import DataError, ModelError
from mmadapt.recipe import TrainOverrides


class DiffusionTuning(StrictModel):
    """Settings shared by the adapter and full strategies (their config models extend this)."""

    auto_caption: str = Field("brand style", max_length=2000, description="caption of a reference with none (the style token)")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="share of steps' captions replaced by the empty prompt")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="overrides of the recipe's train section")


def training_captions(refs, auto_caption: str) -> list[str]:
    return [r.caption if r.caption else auto_caption for r in refs]


def _noise_scheduler(stack):
    from diffusers import DDPMScheduler

    config = dict(stack.scheduler_config)
    if "num_train_timesteps" not in config:
        raise ModelError(
            f"the {stack.scheduler_class.__name__} scheduler is not a DDPM-family scheduler",
            path=stack.recipe.base_model,
            fix="training supports pipelines with a DDPM-family (epsilon / v / sample) scheduler, e.g. SD 1.x/2.x",
        )
    return DDPMScheduler.from_config(config)


@torch.no_grad()
def encode_references(stack, refs, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents, caption embeddings, empty-prompt embedding) of the references, computed once."""
    import numpy as np

    pipe = stack.pipe
    if stack.denoiser != "unet" or not hasattr(pipe, "encode_prompt") or getattr(pipe, "text_encoder_2", None) is not None:
        raise ModelError(
            f"training the denoiser of {type(pipe).__name__} is not supported yet",
            path=stack.recipe.base_model,
            fix="adapter/full training supports UNet pipelines with one text encoder (SD 1.x/2.x); use prompt or retrieval",
        )
    from PIL import Image, ImageOps

    from mmadapt.image.generate import resolution

    size = resolution(stack)
    vae = pipe.vae
    images = [ImageOps.fit(r.image, size, method=Image.Resampling.LANCZOS) for r in refs]
    pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images])).permute(0, 3, 1, 2)
    latents = []
    for i in range(0, len(pixels), 16):
        latents.append(vae.encode(pixels[i : i + 16]).latent_dist.mean)
    latents = torch.cat(latents)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = (latents - shift) * vae.config.scaling_factor
    device = torch.device("cpu")
    embeds = torch.cat([pipe.encode_prompt(captions[i : i + 16], device, 1, False)[0] for i in range(0, len(captions), 16)])
    empty = pipe.encode_prompt([""], device, 1, False)[0]
    return latents, embeds, empty


def train_denoiser(model, stack, data: DataBundle, ctx: FitContext, name: str, tuning: DiffusionTuning) -> FitReport:
    """Train ``model`` (the denoiser: LoRA parameters or all weights trainable) with the shared loop."""
    refs = data.resources.get("references") or []
    if not refs:
        raise DataError("training needs reference images", path=stack.recipe.source, fix="set data.references")
    config = tuning.train.apply(stack.recipe.train)
    latents, embeds, empty = encode_references(stack, refs, training_captions(refs, tuning.auto_caption))
    sched = _noise_scheduler(stack)
    prediction_type = sched.config.prediction_type

    def collate(indices: list[int]):
        x0 = latents[indices]
        noise = torch.randn(x0.shape)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(indices),))
        cond = embeds[indices].clone()
        drop = torch.rand(len(indices)) < tuning.caption_dropout
        cond[drop] = empty[0]
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = sched.get_velocity(x0, noise, t)
        elif prediction_type == "sample":
            target = x0
        else:
            raise ModelError(f"unknown prediction_type {prediction_type!r}", path=stack.recipe.base_model)
        return {"xt": sched.add_noise(x0, noise, t), "t": t, "cond": cond, "target": target}, len(indices)

    def loss_fn(m, batch) -> torch.Tensor:
        pred = m(batch["xt"], batch["t"], encoder_hidden_states=batch["cond"]).sample
        return torch.nn.functional.mse_loss(pred.float(), batch["target"].float(), reduction="none").mean(dim=(1, 2, 3)).sum()

    return trainer.train_strategy(model, ctx, name, lengths=[1] * len(refs), collate=collate, loss_fn=loss_fn, config=config)
