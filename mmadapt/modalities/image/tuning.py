"""Diffusion training data for the shared loop: the noise-prediction loss on the brand references.

The VAE and text encoder are frozen, so each reference's latent (posterior mean x the
VAE's own ``scaling_factor``) and its caption's text embedding are computed once. A
reference without a caption is auto-captioned with ``auto_caption`` (the style token);
``caption_dropout`` of the captions become the empty prompt, so classifier-free guidance
keeps an unconditional branch. Per micro-batch ``collate`` draws the noise and timesteps
from torch's global generator, which the trainer seeds and checkpoints (a resumed run
draws what an uninterrupted one would). How the noisy input, the target and
the denoiser call look is the pipeline family's business (:mod:`mmadapt.modalities.image.families`:
SD 1.x/2.x, SDXL, SD3, Flux); the loss is the per-example MSE times the family's weight,
summed (the trainer divides by the step's examples). With ``model.dtype: bf16`` the VAE and text
encoders run in bf16 (the cache is kept in float32) and a LoRA's frozen base too: its inputs are cast
to that dtype, the LoRA weights and the loss stay float32 (diffusers' scripts' ``weight_dtype``).
``cache_embeddings: false`` keeps only the cropped references and runs the VAE and text encoders on
every micro-batch (the same numbers, more time; for reference sets too large to cache).

Two knobs of the diffusers training scripts move *global* looks (palette, brightness), which
the plain loss learns slowly: at the high-noise steps that decide an image's colours it weighs
a wrong colour little, and a noise without a per-image mean never teaches the model to shift
one. ``noise_offset`` adds ``noise_offset * N(0, 1)`` per image and channel to the noise
(offset noise); ``snr_gamma`` weighs each example by ``min(SNR, gamma) / SNR`` (``/ (SNR + 1)``
for v-prediction; Min-SNR weighting, Hang et al. 2023), so the low-noise steps, which only
polish detail, stop dominating.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mmadapt.config import StrictModel, TrainOverrides
from mmadapt.engine import trainer
from mmadapt.errors import DataError
from mmadapt.modalities.image.families import family_of, min_snr_weights, offset_noise
from mmadapt.protocols import DataBundle, FitContext, FitReport

__all__ = ["DiffusionTuning", "bucket_size", "encode_captions", "encode_latents", "encode_references", "reference_images", "min_snr_weights", "offset_noise", "train_denoiser", "write_loss_log"]
LOSS_LOG = "losses.json"


class DiffusionTuning(StrictModel):
    """Settings shared by the adapter and full strategies (their config models extend this)."""

    auto_caption: str = Field("brand style", max_length=2000, description="caption of a reference with none (the style token)")
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description="share of steps' captions replaced by the empty prompt")
    noise_offset: float = Field(0.0, ge=0.0, le=1.0, description="offset noise: per image and channel, added to the noise")
    snr_gamma: float | None = Field(None, gt=0.0, le=100.0, description="Min-SNR loss weighting (5 is usual); None = off")
    weighting_scheme: Literal["none", "sigma_sqrt", "logit_normal", "mode", "cosmap"] | None = Field(
        None, description="SD3/Flux timestep density and loss weighting (diffusers' names); None = the script's default"
    )
    flux_guidance: float = Field(3.5, ge=0.0, le=50.0, description="Flux: the guidance embedding's value while training")
    gradient_checkpointing: bool = Field(False, description="recompute the denoiser's activations in backward (less memory)")
    cache_embeddings: bool = Field(
        True, description="encode the references' latents and captions' text embeddings once; false: the VAE and text "
        "encoders run on every micro-batch (less memory for very many references, slower)"
    )
    buckets: bool = Field(False, description="aspect-ratio buckets: each reference at its aspect ratio (about the resolution's area)")
    bucket_step: int = Field(64, ge=4, le=1024, description="bucket sides are multiples of this many pixels")
    train: TrainOverrides = Field(default_factory=TrainOverrides, description="overrides of the recipe's train section")


def training_captions(refs, auto_caption: str) -> list[str]:
    return [r.caption if r.caption else auto_caption for r in refs]


def bucket_size(size: tuple[int, int], target: tuple[int, int], step: int) -> tuple[int, int]:
    """The (w, h) bucket of an image of ``size``: about ``target``'s area, the image's aspect ratio,
    sides rounded to multiples of ``step`` (what a centre crop then trims is that rounding only)."""
    area, ratio = target[0] * target[1], size[0] / size[1]
    w = max(step, round((area * ratio) ** 0.5 / step) * step)
    h = max(step, round((area / ratio) ** 0.5 / step) * step)
    return w, h


def reference_images(refs, target: tuple[int, int], tuning: DiffusionTuning) -> list:
    """Each reference as it is encoded: centre-cropped to ``target``, or to its aspect-ratio bucket."""
    from PIL import Image, ImageOps

    sizes = [bucket_size(r.image.size, target, tuning.bucket_step) if tuning.buckets else target for r in refs]
    return [ImageOps.fit(r.image, size, method=Image.Resampling.LANCZOS) for r, size in zip(refs, sizes)]


def size_groups(images) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The references of each size (group ``b``'s members) and ``bucket[i] = (b, row)``."""
    groups = [[i for i, im in enumerate(images) if im.size == size] for size in dict.fromkeys(im.size for im in images)]
    bucket = [(0, 0)] * len(images)
    for b, members in enumerate(groups):
        for row, i in enumerate(members):
            bucket[i] = (b, row)
    return groups, bucket


@torch.no_grad()
def encode_latents(vae, images) -> torch.Tensor:
    """The float32 latents (posterior mean, shifted and scaled as the VAE says) of same-size images,
    through the VAE in its own dtype (``model.dtype``)."""
    import numpy as np

    arrays = np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images])
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).to(vae.dtype)
    encoded = torch.cat([vae.encode(pixels[i : i + 16]).latent_dist.mean for i in range(0, len(pixels), 16)]).float()
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (encoded - shift) * vae.config.scaling_factor


@torch.no_grad()
def encode_captions(family, captions: list[str]) -> dict[str, torch.Tensor]:
    """The family's text conditions of ``captions``, float32."""
    parts = [family.encode_prompts(captions[i : i + 16]) for i in range(0, len(captions), 16)]
    return {k: torch.cat([p[k] for p in parts]).float() for k in parts[0]}


@torch.no_grad()
def encode_references(stack, refs, captions: list[str], family, tuning: DiffusionTuning):
    """(latent groups, bucket of each reference, caption conditions, the unconditional one,
    per-reference inputs), computed once. References of one size are encoded together: group
    ``b`` is a (n_b, C, h, w) tensor, ``bucket[i] = (b, row)`` where reference ``i`` sits."""
    from mmadapt.modalities.image.predict import resolution

    images = reference_images(refs, resolution(stack), tuning)
    members, bucket = size_groups(images)
    groups = [encode_latents(stack.pipe.vae, [images[i] for i in group]) for group in members]
    cond = encode_captions(family, captions)
    empty = {k: v.float() for k, v in family.unconditional(cond).items()}
    extras = family.reference_inputs([r.image.size for r in refs], [im.size for im in images])
    return groups, bucket, cond, empty, extras


def frozen_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of ``model``'s frozen weights (``model.dtype`` for a LoRA's base; float32 when all train)."""
    return next((p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()), torch.float32)


def as_inputs(batch: dict, dtype: torch.dtype) -> dict:
    """The denoiser's float inputs (noisy latent, text conditions) in its weights' ``dtype``, as diffusers'
    scripts pass ``weight_dtype`` inputs; timesteps, targets and loss weights stay as drawn."""
    if dtype == torch.float32:
        return batch
    cast = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    cast["cond"] = {k: v.to(dtype) for k, v in batch["cond"].items()}
    return {**cast, **{k: batch[k] for k in ("t", "target", "weight") if k in batch}}


def train_denoiser(model, stack, data: DataBundle, ctx: FitContext, name: str, tuning: DiffusionTuning) -> FitReport:
    """Train ``model`` (the denoiser: LoRA parameters or all weights trainable) with the shared loop."""
    refs = data.resources.get("references") or []
    if not refs:
        raise DataError("training needs reference images", path=stack.recipe.source, fix="set data.references")
    config = tuning.train.apply(stack.recipe.train)
    family = family_of(stack, tuning)
    captions = training_captions(refs, tuning.auto_caption)
    if tuning.cache_embeddings:
        latents, bucket, cond_all, empty, extras = encode_references(stack, refs, captions, family, tuning)
    else:  # only the crops are kept: the VAE and the text encoders run on every micro-batch
        from mmadapt.modalities.image.predict import resolution

        images = reference_images(refs, resolution(stack), tuning)
        bucket = size_groups(images)[1]
        empty = {k: v.float() for k, v in family.unconditional(encode_captions(family, captions[:1])).items()}
        extras = family.reference_inputs([r.image.size for r in refs], [im.size for im in images])

    def encoded(b: int, idx: list[int]):
        if tuning.cache_embeddings:
            return latents[b][[bucket[i][1] for i in idx]], {k: v[idx].clone() for k, v in cond_all.items()}
        return encode_latents(stack.pipe.vae, [images[i] for i in idx]), encode_captions(family, [captions[i] for i in idx])

    def collate(indices: list[int]):
        groups = []
        for b in dict.fromkeys(bucket[i][0] for i in indices):  # one sub-batch per latent size
            idx = [i for i in indices if bucket[i][0] == b]
            x0, cond = encoded(b, idx)
            draw = family.draw(x0)
            drop = torch.rand(len(idx)) < tuning.caption_dropout
            for k, v in cond.items():
                v[drop] = empty[k][0]
            batch = family.make_inputs(x0, draw, cond)
            batch.update({k: v[idx] for k, v in extras.items()})
            groups.append(batch)
        return groups, len(indices)

    dtype = frozen_dtype(model)

    def loss_fn(m, groups) -> torch.Tensor:
        losses = []
        for batch in groups:
            pred = family.predict(m, as_inputs(batch, dtype))
            per_example = torch.nn.functional.mse_loss(pred.float(), batch["target"].float(), reduction="none")
            losses.append((per_example.flatten(1).mean(dim=1) * batch["weight"]).sum())
        return losses[0] if len(losses) == 1 else torch.stack(losses).sum()

    if tuning.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    try:
        lengths = [b + 1 for b, _row in bucket]  # the trainer puts equal lengths in one micro-batch
        return trainer.train_strategy(model, ctx, name, lengths=lengths, collate=collate, loss_fn=loss_fn, config=config)
    finally:
        if tuning.gradient_checkpointing:
            model.disable_gradient_checkpointing()


def write_loss_log(part_dir, report: FitReport) -> None:
    """``losses.json`` in the part: the loss of every step (what "the loss fell" is read from)."""
    import json

    (part_dir / LOSS_LOG).write_text(json.dumps([row["loss"] for row in report.log]) + "\n")
