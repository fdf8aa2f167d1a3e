"""One adapter per denoiser family: what the shared diffusion loss needs to know about a pipeline.

:mod:`mmadapt.modalities.image.tuning` is one loop for every family; a family says how its
prompts are encoded (once, cached), how a noisy training input and its target are drawn, and
how the denoiser is called. The objectives follow diffusers' own training examples:

* ``sd`` (SD 1.x/2.x UNet, one CLIP): DDPM noising, target noise / velocity / sample per the
  scheduler's ``prediction_type``, optional Min-SNR weights (``train_text_to_image.py``).
* ``sdxl`` (UNet with ``text_time`` embedding): both text encoders' hidden states and the
  pooled projection, and the micro-conditioning ``add_time_ids`` = original size, crop
  top-left, target size of each reference (``train_dreambooth_lora_sdxl.py``).
* ``sd3`` (``SD3Transformer2DModel``) and ``flux`` (``FluxTransformer2DModel``): rectified
  flow. ``u ~ compute_density_for_timestep_sampling(weighting_scheme)``, the timestep and
  sigma at index ``u * num_train_timesteps`` of the scheduler (its ``shift`` applied), input
  ``(1 - sigma) x0 + sigma noise``, target ``noise - x0`` (the velocity), weight
  ``compute_loss_weighting_for_sd3`` (``train_dreambooth_lora_sd3.py`` / ``_flux.py``). Flux
  packs 2 x 2 latent patches into tokens, passes latent image ids and text ids, ``timestep / 1000``
  and its guidance embedding.

Every draw comes from torch's global generator (seeded and checkpointed by the trainer), in
a fixed order per family; the ``sd`` family draws exactly what it drew before families existed.
"""

from __future__ import annotations

from typing import Any

import torch

from mmadapt.errors import ModelError

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
JOINT_ATTENTION = (*ATTENTION, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
DEFAULT_FLOW_WEIGHTING = {"sd3": "logit_normal", "flux": "none"}  # the scripts' defaults


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


def crop_coords(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a centre crop to ``target`` (w, h) after scaling ``size`` (w, h) to cover it."""
    scale = max(target[0] / size[0], target[1] / size[1])
    return (round(size[1] * scale) - target[1]) // 2, (round(size[0] * scale) - target[0]) // 2


class PromptDefaults:
    """What most families share: a dropped caption trains the empty prompt, references add no inputs."""

    def unconditional(self, captions_cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The condition a dropped caption trains (the empty prompt's, one row)."""
        return self.encode_prompts([""])

    def reference_inputs(self, sizes: list[tuple[int, int]], targets: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Per-reference model inputs beside the latent (from each reference's size and the size it
        was cropped to, both (w, h)); none here."""
        return {}


class DDPMFamily(PromptDefaults):
    """SD 1.x/2.x: one CLIP text encoder, a UNet, a DDPM-family scheduler."""

    name = "sd"
    lora_targets = ATTENTION

    def __init__(self, stack, tuning):
        from diffusers import DDPMScheduler

        self.stack, self.tuning = stack, tuning
        config = dict(stack.scheduler_config)
        if "num_train_timesteps" not in config or "beta_schedule" not in config:
            raise ModelError(
                f"the {stack.scheduler_class.__name__} scheduler is not a DDPM-family scheduler",
                path=stack.recipe.base_model,
                fix="UNet training needs a DDPM-family (epsilon / v / sample) scheduler, as SD 1.x/2.x and SDXL ship",
            )
        self.sched = DDPMScheduler.from_config(config)
        self.prediction_type = self.sched.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ModelError(f"unknown prediction_type {self.prediction_type!r}", path=stack.recipe.base_model)

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        embeds = self.stack.pipe.encode_prompt(captions, torch.device("cpu"), 1, False)[0]
        return {"encoder_hidden_states": embeds}

    def draw(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        noise = offset_noise(x0.shape, self.tuning.noise_offset)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (len(x0),))
        return {"noise": noise, "t": t}

    def make_inputs(self, x0: torch.Tensor, draw: dict[str, torch.Tensor], cond: dict[str, torch.Tensor]) -> dict[str, Any]:
        noise, t = draw["noise"], draw["t"]
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = self.sched.get_velocity(x0, noise, t)
        else:
            target = x0
        weight = min_snr_weights(self.sched.alphas_cumprod, t, self.tuning.snr_gamma, self.prediction_type)
        return {"xt": self.sched.add_noise(x0, noise, t), "t": t, "cond": cond, "target": target, "weight": weight}

    def predict(self, model, batch: dict[str, Any]) -> torch.Tensor:
        return model(batch["xt"], batch["t"], encoder_hidden_states=batch["cond"]["encoder_hidden_states"]).sample


class SDXLFamily(DDPMFamily):
    """SDXL: two CLIP encoders (hidden states concatenated, pooled projection) and add_time_ids."""

    name = "sdxl"

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.stack.pipe.encode_prompt(
            captions, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}

    def unconditional(self, captions_cond: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.stack.pipe.config.force_zeros_for_empty_prompt:  # what the pipeline's CFG branch uses
            return {k: torch.zeros_like(v[:1]) for k, v in captions_cond.items()}
        return self.encode_prompts([""])

    def reference_inputs(self, sizes: list[tuple[int, int]], targets: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """``time_ids`` = (original h, w, crop top, left, target h, w) of each reference."""
        rows = [(h, w, *crop_coords((w, h), t), t[1], t[0]) for (w, h), t in zip(sizes, targets)]
        return {"time_ids": torch.tensor(rows, dtype=torch.float32)}

    def predict(self, model, batch: dict[str, Any]) -> torch.Tensor:
        cond = batch["cond"]
        added = {"text_embeds": cond["text_embeds"], "time_ids": batch["time_ids"]}
        return model(batch["xt"], batch["t"], encoder_hidden_states=cond["encoder_hidden_states"], added_cond_kwargs=added).sample


class FlowFamily(PromptDefaults):
    """SD3 / SD3.5: rectified flow on an MMDiT, CLIP-L + CLIP-G + T5 prompts."""

    name = "sd3"
    lora_targets = JOINT_ATTENTION

    def __init__(self, stack, tuning):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.stack, self.tuning = stack, tuning
        self.sched = FlowMatchEulerDiscreteScheduler.from_config(dict(stack.scheduler_config))
        self.weighting = tuning.weighting_scheme or DEFAULT_FLOW_WEIGHTING[self.name]

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        embeds, _, pooled, _ = self.stack.pipe.encode_prompt(
            captions, None, None, device=torch.device("cpu"), num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def draw(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        from diffusers.training_utils import compute_density_for_timestep_sampling

        noise = offset_noise(x0.shape, self.tuning.noise_offset)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.weighting, batch_size=len(x0), logit_mean=0.0, logit_std=1.0, mode_scale=1.29
        )
        indices = (u * self.sched.config.num_train_timesteps).long().clamp(max=len(self.sched.timesteps) - 1)
        return {"noise": noise, "indices": indices}

    def make_inputs(self, x0: torch.Tensor, draw: dict[str, torch.Tensor], cond: dict[str, torch.Tensor]) -> dict[str, Any]:
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        noise, indices = draw["noise"], draw["indices"]
        sigmas = self.sched.sigmas[indices].float().view(-1, 1, 1, 1)
        weight = compute_loss_weighting_for_sd3(weighting_scheme=self.weighting, sigmas=sigmas).view(-1)
        return {
            "xt": (1.0 - sigmas) * x0 + sigmas * noise,
            "t": self.sched.timesteps[indices].float(),
            "cond": cond,
            "target": noise - x0,
            "weight": weight,
        }

    def predict(self, model, batch: dict[str, Any]) -> torch.Tensor:
        cond = batch["cond"]
        return model(
            hidden_states=batch["xt"],
            timestep=batch["t"],
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
            return_dict=False,
        )[0]


class FluxFamily(FlowFamily):
    """Flux: rectified flow on packed 2 x 2 latent tokens, CLIP pooled + T5 prompts, guidance embedding."""

    name = "flux"
    lora_targets = JOINT_ATTENTION

    def encode_prompts(self, captions: list[str]) -> dict[str, torch.Tensor]:
        embeds, pooled, _ = self.stack.pipe.encode_prompt(captions, None, device=torch.device("cpu"), num_images_per_prompt=1)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled}

    def predict(self, model, batch: dict[str, Any]) -> torch.Tensor:
        from diffusers import FluxPipeline

        xt, cond = batch["xt"], batch["cond"]
        b, c, h, w = xt.shape
        packed = FluxPipeline._pack_latents(xt, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, xt.device, xt.dtype)
        txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, dtype=xt.dtype, device=xt.device)
        guidance = torch.full((b,), self.tuning.flux_guidance, device=xt.device) if model.config.guidance_embeds else None
        pred = model(
            hidden_states=packed,
            timestep=batch["t"] / 1000.0,
            guidance=guidance,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=cond["encoder_hidden_states"],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        scale = self.stack.pipe.vae_scale_factor
        return FluxPipeline._unpack_latents(pred, h * scale, w * scale, scale)


TRANSFORMERS = {"SD3Transformer2DModel": FlowFamily, "FluxTransformer2DModel": FluxFamily}


def family_of(stack, tuning):
    """The family adapter of the stack's pipeline, or a one-line ModelError naming what trains."""
    pipe, denoiser = stack.pipe, stack.unet
    kind = type(denoiser).__name__
    if stack.denoiser == "unet" and kind == "UNet2DConditionModel":
        if denoiser.config.addition_embed_type == "text_time" and getattr(pipe, "text_encoder_2", None) is not None:
            return SDXLFamily(stack, tuning)
        if denoiser.config.addition_embed_type is None and getattr(pipe, "text_encoder_2", None) is None:
            return DDPMFamily(stack, tuning)
    if kind in TRANSFORMERS:
        return TRANSFORMERS[kind](stack, tuning)
    raise ModelError(
        f"training the denoiser of {type(pipe).__name__} ({kind}) is not supported",
        path=stack.recipe.base_model,
        fix="adapter/full training supports SD 1.x/2.x, SDXL, SD3/SD3.5 and Flux pipelines; use prompt or retrieval",
    )


def lora_targets(denoiser, family, targets: list[str] | None) -> list[str]:
    """The LoRA target module names: the family's attention projections by default; ``["all"]``
    = every ``nn.Linear`` of the denoiser (peft's ``all-linear`` takes transformers models only)."""
    if targets is None:
        return list(family.lora_targets)
    if targets == ["all"]:
        return sorted({n for n, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)})
    return list(targets)
