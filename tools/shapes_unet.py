"""The denoiser of shapes-diffusion: the UNet stage, its sampler and the export of the whole
``StableDiffusionPipeline`` folder. See :mod:`tools.shapes_train`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmadapt.models.cache import write_hashes
from tools.shapes_common import (
    IMAGE_SIZE,
    LATENT_CHANNELS,
    LATENT_SIZE,
    PIXEL_LATENT_CHANNELS,
    SAMPLE_CLIP,
    SceneData,
    cosine_schedule,
    load_ckpt,
    log,
    replace_folder,
    save_ckpt,
    tokenize,
)


def unet_config(cross_dim: int, pixel_space: bool = False, channels_per_level: tuple[int, ...] | None = None) -> dict:
    plain = 2 if pixel_space else 1  # levels without attention: 32 and 16 px, or the 16x16 latent
    channels = PIXEL_LATENT_CHANNELS if pixel_space else LATENT_CHANNELS
    return dict(
        sample_size=IMAGE_SIZE if pixel_space else LATENT_SIZE,
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownBlock2D",) * plain + ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D") + ("UpBlock2D",) * plain,
        block_out_channels=channels_per_level or ((16, 32, 64, 64) if pixel_space else (32, 64, 64)),
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def scheduler_config() -> dict:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        steps_offset=1,
    )


def sampling_scheduler():
    """The shipped sampler: DDIM over the training betas, "trailing" spacing (starts at t=999),
    x0 predictions clipped to the latent range.

    The linear schedule ends at alpha_bar ~ 4e-5, so an x0 estimate at high t divides the
    noise-prediction error by ~0.006; unclipped samplers (DPM-Solver++, DDIM without
    clipping) blow up into saturated colour fields on this small model. The latents span
    about -3.7..2.7 (scaled), so clipping at 4 keeps every real latent value.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(**scheduler_config(), clip_sample=True, clip_sample_range=SAMPLE_CLIP, timestep_spacing="trailing")


def save_sampling_scheduler(folder: Path) -> None:
    """Write :func:`sampling_scheduler` as ``folder/scheduler`` (replacing what is there)."""
    shutil.rmtree(folder / "scheduler", ignore_errors=True)
    sampling_scheduler().save_pretrained(folder / "scheduler")


def use_sampling_scheduler(folder: Path) -> None:
    """Rewrite ``folder``'s scheduler as :func:`sampling_scheduler` and refresh its hashes."""
    save_sampling_scheduler(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    write_hashes(folder)


def export_pipeline(out: Path, tokenizer, text_encoder, vae, unet, info: dict) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sampling_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out / ".shapes-diffusion.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    save_sampling_scheduler(tmp)  # the pipeline's constructor turned the scheduler's clip_sample off
    for config_file in tmp.glob("*/config.json"):  # components loaded from a folder remember its path
        config = json.loads(config_file.read_text())
        if config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (tmp / "training.json").write_text(json.dumps(info, indent=1))
    replace_folder(tmp, out / "shapes-diffusion")


def train_unet(
    out: Path,
    work: Path,
    tokenizer,
    text_encoder,
    vae,
    data: SceneData,
    seconds: float,
    seed: int,
    export_every: float = 600.0,
    pixel_space: bool = False,
    channels_per_level: tuple[int, ...] | None = None,
):
    from diffusers import DDPMScheduler, UNet2DConditionModel

    text_encoder.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    torch.manual_seed(seed)
    config = unet_config(text_encoder.config.hidden_size, pixel_space, channels_per_level)
    unet = UNet2DConditionModel(**config)
    ema = UNet2DConditionModel(**config)
    ema.load_state_dict(unet.state_dict())
    ema.eval().requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    batch, est_total = 48, 6000
    sched = cosine_schedule(opt, 200, est_total)
    noise_sched = DDPMScheduler(**scheduler_config())
    ck = load_ckpt(work / "unet.ckpt")
    step, spent = 0, 0.0
    if ck:
        unet.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, spent = ck["step"], ck["spent"]
        log(f"unet: resumed at step {step} ({spent:.0f}s spent)")
    log(f"unet params {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M")
    # latents of the whole pool once (the VAE is frozen): mean of the posterior, scaled
    with torch.no_grad():
        scale = vae.config.scaling_factor
        latents = torch.cat(
            [
                vae.encode(data.images(torch.arange(i, min(i + 512, len(data))))).latent_dist.mean * scale
                for i in range(0, len(data), 512)
            ]
        ).half()
    log(f"latents {tuple(latents.shape)} std {latents.float().std():.3f} range {latents.min():.2f}..{latents.max():.2f}")
    if latents.abs().max() > SAMPLE_CLIP:
        log(f"warning: latents exceed the sampler's x0 clip range {SAMPLE_CLIP}")
    gen = torch.Generator().manual_seed(seed + 11 + step)
    start, last_save, last_export, losses = time.time(), time.time(), time.time(), []

    def info() -> dict:
        return dict(
            unet_steps=step,
            unet_seconds=round(spent + time.time() - start),
            unet_loss=float(np.mean(losses[-100:])) if losses else None,
            batch=batch,
            seed=seed,
        )

    unet.train()
    while spent + (time.time() - start) < seconds:
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        x0 = latents[idx].float()
        caps = data.captions(idx, full_share=0.3)
        caps = [c if data.rng.random() >= 0.1 else "" for c in caps]
        with torch.no_grad():
            cond = text_encoder(tokenize(tokenizer, caps))[0]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.mul_(decay).add_(p.detach(), alpha=1 - decay)
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log(f"unet step {step} loss {np.mean(losses[-50:]):.4f}")
        if time.time() - last_save > 180:
            save_ckpt(
                work / "unet.ckpt",
                dict(
                    model=unet.state_dict(),
                    ema=ema.state_dict(),
                    opt=opt.state_dict(),
                    sched=sched.state_dict(),
                    step=step,
                    spent=spent + time.time() - start,
                ),
            )
            last_save = time.time()
        if time.time() - last_export > export_every:
            export_pipeline(out, tokenizer, text_encoder, vae, ema, info())
            log(f"exported shapes-diffusion at step {step}")
            last_export = time.time()
    final = info()
    spent += time.time() - start
    save_ckpt(
        work / "unet.ckpt",
        dict(
            model=unet.state_dict(),
            ema=ema.state_dict(),
            opt=opt.state_dict(),
            sched=sched.state_dict(),
            step=step,
            spent=spent,
        ),
    )
    final["unet_seconds"] = round(spent)
    export_pipeline(out, tokenizer, text_encoder, vae, ema, final)
    log(f"unet: done, {step} steps, {spent:.0f}s, loss {final['unet_loss']}")
