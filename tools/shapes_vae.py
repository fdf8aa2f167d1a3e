"""The autoencoder of shapes-diffusion: the VAE stage (2x, or ``--pixel-space``) and the
decoder-only gamut stage. See :mod:`tools.shapes_train`.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tools import shapes_world as sw
from tools.shapes_common import (
    IMAGE_SIZE,
    LATENT_CHANNELS,
    PIXEL_LATENT_CHANNELS,
    VAE_CROP,
    VAE_DETAIL_POOL,
    SceneData,
    cosine_schedule,
    load_ckpt,
    log,
    save_ckpt,
)


def vae_config(pixel_space: bool = False) -> dict:
    blocks = 1 if pixel_space else 2
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(32,) if pixel_space else (16, 48),
        layers_per_block=1,
        latent_channels=PIXEL_LATENT_CHANNELS if pixel_space else LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )


def detail_images(n: int, seed: int) -> torch.Tensor:
    """``n`` :func:`~tools.shapes_world.render_detail` images in [-1, 1] (brand-naive)."""
    rng = random.Random(seed)
    pixels = np.stack([np.asarray(sw.render_detail(rng, IMAGE_SIZE)) for _ in range(n)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_vae(work: Path, data: SceneData, seconds: float, seed: int, pixel_space: bool = False):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**vae_config(pixel_space))
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    sched = cosine_schedule(opt, 50, max(200, int(seconds / (0.12 if pixel_space else 0.4))))
    ck = load_ckpt(work / "vae.ckpt")
    step, spent = 0, 0.0
    if ck:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, spent = ck["step"], ck["spent"]
        if ck.get("done"):
            vae.register_to_config(scaling_factor=ck["scaling_factor"])
            return vae
    detail = detail_images(VAE_DETAIL_POOL, seed + 5) if pixel_space else None
    gen = torch.Generator().manual_seed(seed + 7 + step)
    start, losses = time.time(), []
    vae.train()
    while spent + (time.time() - start) < seconds:
        if detail is None:
            x = data.images(torch.randint(0, len(data), (32,), generator=gen))
        else:
            idx = torch.randint(0, len(data), (16,), generator=gen)
            x = torch.cat([data.images(idx), detail[torch.randint(0, len(detail), (16,), generator=gen)]])
        # fully convolutional, so random 16x16 crops teach it the same thing 4x cheaper
        top, left = (int(v) for v in torch.randint(0, IMAGE_SIZE - VAE_CROP + 1, (2,), generator=gen))
        x = x[:, :, top : top + VAE_CROP, left : left + VAE_CROP]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(gen) if pixel_space else post.sample()).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(F.mse_loss(rec, x).item())
        step += 1
        if step % 50 == 0:
            log(f"vae step {step} mse {np.mean(losses[-50:]):.5f}")
    spent += time.time() - start
    vae.eval()
    with torch.no_grad():
        lat = torch.cat(
            [
                vae.encode(data.images(torch.arange(i, min(i + 256, len(data))))).latent_dist.mean
                for i in range(0, min(2048, len(data)), 256)
            ]
        )
    scaling = float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scaling)
    final = float(np.mean(losses[-50:])) if losses else float("nan")
    save_ckpt(
        work / "vae.ckpt",
        dict(
            model=vae.state_dict(),
            opt=opt.state_dict(),
            sched=sched.state_dict(),
            step=step,
            spent=spent,
            done=True,
            scaling_factor=scaling,
            mse=final,
        ),
    )
    log(f"vae: done, {step} steps, {spent:.0f}s, mse {final:.5f}, scaling_factor {scaling:.4f}")
    return vae


def train_vae_decoder(work: Path, vae, data: SceneData, steps: int, seed: int, pool: int = 4000):
    """Widen the VAE decoder's gamut: decoder-only fine-tuning (encoder and ``quant_conv``
    frozen, so the latent space, its ``scaling_factor`` and any UNet trained on it stay valid)
    on 16x16 crops at even offsets (aligned with the 2x latent grid) of base-world renders
    mixed 1:1 with :func:`~tools.shapes_world.render_detail` images (every colour
    uniform over the RGB cube, random 1-px lines; no brand palette, no frame).

    The base-world VAE only ever decoded the base palette, so it decoded any other colour
    dull (navy as dark teal): no denoiser adaptation could then reach a brand palette. A
    brand-naive, any-colour decoder fixes that without teaching the brand.
    """
    ck = load_ckpt(work / "vae_decoder.ckpt")
    if ck and ck.get("done"):
        vae.load_state_dict(ck["model"])
        return vae
    detail = detail_images(pool, seed + 5)
    base = data.images(torch.arange(min(pool, len(data))))
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3)
    gen = torch.Generator().manual_seed(seed + 7)
    start, losses = time.time(), []
    vae.train()
    vae.encoder.eval()
    for step in range(steps):
        x = torch.cat(
            [detail[torch.randint(0, len(detail), (16,), generator=gen)], base[torch.randint(0, len(base), (16,), generator=gen)]]
        )
        top, left = (2 * int(v) for v in torch.randint(0, (IMAGE_SIZE - VAE_CROP) // 2 + 1, (2,), generator=gen))
        x = x[:, :, top : top + VAE_CROP, left : left + VAE_CROP]
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(gen)
        # a 30-step ramp times a cosine from 1 to 0.1 over all the steps: no library schedule has
        # this product, and the shipped decoder (step-budgeted, so a refresh reproduces it) used it
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 30) * (0.1 + 0.45 * (1 + math.cos(math.pi * step / steps)))
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(F.mse_loss(rec, x).item())
        if (step + 1) % 100 == 0:
            log(f"vae-decoder step {step + 1} mse {np.mean(losses[-100:]):.5f}")
    vae.eval()
    vae.requires_grad_(False)
    final = float(np.mean(losses[-100:])) if losses else float("nan")
    save_ckpt(work / "vae_decoder.ckpt", dict(model=vae.state_dict(), steps=steps, mse=final, done=True))
    log(f"vae-decoder: done, {steps} steps, {time.time() - start:.0f}s, mse {final:.5f}")
    return vae
