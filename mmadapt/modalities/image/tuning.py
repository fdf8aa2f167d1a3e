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

Two knobs of the diffusers training scripts move *global* looks (palette, brightness), which
the plain loss learns slowly: at the high-noise steps that decide an image's colours it weighs
a wrong colour little, and a noise without a per-image mean never teaches the model to shift
one. ``noise_offset`` adds ``noise_offset * N(0, 1)`` per image and channel to the noise
(offset noise); ``snr_gamma`` weighs each example by ``min(SNR, gamma) / SNR`` (``/ (SNR + 1)``
for v-prediction; Min-SNR weighting, Hang et al. 2023), so the low-noise steps, which only
polish detail, stop dominating.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mmadapt.config import StrictModel, TrainOverrides
from mmadapt.engine import trainer
from mmadapt.errors import DataError, ModelError
from mmadapt.protocols import DataBundle, FitContext, FitReport


class DiffusionTuning(StrictModel):
    """Settings shared by the adapter and full strategies (their config models extend this)."""

    auto_caption: str = Field("brand style", max_length=2000, description="caption of a reference with none (the style token)")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="share of steps' captions replaced by the empty prompt")
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, description="offset noise: per image and channel, added to the noise")
    snr_gamma: float | None = Field(None, gt=0.0, le=100.0, description="Min-SNR loss weighting (5 is usual); None = off")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="overrides of the recipe's train section")


def training_captions(refs, auto_caption: str) -> list[str]:
    return [r.caption if r.caption else auto_caption for r in refs]


def offset_noise(shape: torch.Size, offset: float) -> torch.Tensor:
    """Gaussian noise of ``shape`` (B, C, H, W) plus ``offset`` x N(0, 1) per image and channel."""
    noise = torch.randn(shape)
    if offset:
        noise = noise + offset * torch.randn(shape[0], shape[1], 1, 1)
    return noise


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Per-example Min-SNR loss weights for timesteps ``t`` (all ones when ``gamma`` is None).

    The weight turns each target's loss into ``min(SNR, gamma)`` times the loss on the clean
    image: ``/ SNR`` for epsilon, ``/ (SNR + 1)`` for v-prediction, ``1`` for sample.
    """
    if gamma is None:
        return torch.ones(len(t))
    snr = alphas_cumprod[t] / (1.0 - alphas_cumprod[t])
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "sample":
        return clipped
    return clipped / snr


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

    from mmadapt.modalities.image.predict import resolution

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
    alphas_cumprod = sched.alphas_cumprod

    def collate(indices: list[int]):
        x0 = latents[indices]
        noise = offset_noise(x0.shape, tuning.noise_offset)
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
        weight = min_snr_weights(alphas_cumprod, t, tuning.snr_gamma, prediction_type)
        batch = {"xt": sched.add_noise(x0, noise, t), "t": t, "cond": cond, "target": target, "weight": weight}
        return batch, len(indices)

    def loss_fn(m, batch) -> torch.Tensor:
        pred = m(batch["xt"], batch["t"], encoder_hidden_states=batch["cond"]).sample
        per_example = torch.nn.functional.mse_loss(pred.float(), batch["target"].float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_example * batch["weight"]).sum()

    return trainer.train_strategy(model, ctx, name, lengths=[1] * len(refs), collate=collate, loss_fn=loss_fn, config=config)
