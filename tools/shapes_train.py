"""Train the embedded shapes-world models: ``shapes-clip`` and ``shapes-diffusion``.

From the repository root (``tools`` is not installed; see ``tools/README.md``)::

    python -m tools.shapes_train --out DIR --minutes 60 [--threads 1] [--seed 0]

Stages, each resumable from its checkpoint ``DIR/work/<stage>.ckpt/`` (weights and optimizer
moments as safetensors, the rest as ``state.json``; re-run the same command):

1. **tokenizer** — a CLIP byte-level BPE (``CLIPTokenizer``) whose merges are learned
   from shapes-world captions: every grammar word is one token, any other word (e.g.
   ``zentrix``) still tokenizes into byte pieces, so no download is needed.
2. **clip** — a small ``transformers.CLIPModel`` (ViT 32x32, patch 4) trained
   contrastively on base-world (image, caption) pairs (``DIR/clip-base``); its text tower
   becomes the diffusion model's text encoder, so the generator never sees the brand.
   **clip_styles** — that CLIP fine-tuned with 20% brand-style pairs (captions ending in
   ``zentrix style``, half of them without it, so a content-only prompt still matches a
   brand image of that content): the evaluator, exported to ``DIR/shapes-clip``.
3. **vae** — an ``AutoencoderKL`` with two blocks, i.e. one 2x downsampling (latents
   8x16x16 for a 32x32x3 image: 2/3 as many numbers as pixel values), trained
   on random 16x16 crops (it is fully convolutional); its ``scaling_factor`` is set to
   1/std of the latents. **vae_decoder** — its decoder alone (the latent space stays)
   fine-tuned on base renders mixed 1:1 with brand-naive any-colour images
   (``--decoder-steps``, 1500), so it can decode colours the base world never draws.
4. **unet** — a small ``UNet2DConditionModel`` conditioned on the frozen CLIP text
   tower, DDPM epsilon-prediction, 10% caption dropout for classifier-free guidance,
   EMA weights. Exported with the VAE, text tower and tokenizer as a
   ``StableDiffusionPipeline`` folder (``DIR/shapes-diffusion``, DDIM scheduler with x0 clipping, see ``sampling_scheduler``)
   every few minutes and at the end.

``--pixel-space`` trains the variant measured for the brand-style ceiling instead (not the
shipped model): an ``AutoencoderKL`` with one block, i.e. no downsampling (latents 4x32x32,
so diffusion is effectively in pixel space), trained on base-world renders mixed 1:1 with
:func:`~tools.shapes_world.render_detail` images (any RGB colour, random 1-px lines;
no brand palette, no frame), and a 4-level UNet (32, 16, 8, 4 px; cross-attention at 8 and 4).
Its autoencoder passes the brand references through at palette adherence 0.888 (the shipped
VAE then: 0.276, with the 1-px brand motif), but 42 + 25 minutes of UNet training on 2 CPU cores left its samples grainy and
its captions poorly followed (``datasets/brand-style/README.md``).

``--refresh FOLDER`` (a folder with exported ``shapes-clip/`` and ``shapes-diffusion/``) runs only
the two stages that leave the UNet's latent space alone on those models: the decoder gamut
stage on the pipeline's VAE (UNet, text tower and sampler copied) and the evaluator stage from
that ``shapes-clip``. The shipped models were last updated so:
``--refresh <the previous mmadapt/models/shapes> --clip-styles-minutes 3 --threads 2``.

``--text-encoder-from FOLDER`` skips the tokenizer and CLIP stages and takes the tokenizer and
text tower of an exported pipeline instead (e.g. the shipped ``shapes-diffusion``), to
retrain only the autoencoder and the UNet.

``--minutes`` is the total budget, split 14% / 4% / 7% / 75% over clip / clip_styles / vae / unet
(each overridable, e.g. ``--unet-minutes``). Exports
carry ``.mmadapt-hashes.json`` so :mod:`mmadapt.models.shapes` can verify them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mmadapt.models.cache import write_hashes
from tools import shapes_world as sw

IMAGE_SIZE = 32
LATENT_SIZE = 16  # the VAE halves the side once
LATENT_CHANNELS = 8
PIXEL_LATENT_CHANNELS = 4  # --pixel-space: latents 4x32x32
VAE_CROP = 16
VAE_DETAIL_POOL = 8000  # --pixel-space: render_detail images mixed 1:1 with base-world renders
SAMPLE_CLIP = 4.0  # |x0| bound of the sampler, in scaled latent units
MAX_TOKENS = 24
SPLIT = {"clip": 0.14, "clip_styles": 0.04, "vae": 0.07, "unet": 0.75}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- tokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def learn_merges(words: Counter, max_merges: int = 2000) -> list[tuple[str, str]]:
    """Plain BPE on word counts (CLIP style: the last symbol carries ``</w>``), deterministic ties."""
    corpus = {tuple(list(w[:-1]) + [w[-1] + "</w>"]): c for w, c in words.items() if w}
    merges: list[tuple[str, str]] = []
    for _ in range(max_merges):
        pairs: Counter = Counter()
        for symbols, count in corpus.items():
            for a, b in zip(symbols, symbols[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], tuple(-ord(ch) for ch in kv[0][0] + kv[0][1])))[0]
        merges.append(best)
        merged = {}
        for symbols, count in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] = count
        corpus = merged
    return merges


def caption_corpus(n: int = 4000, seed: int = 123) -> Counter:
    rng = random.Random(seed)
    words: Counter = Counter()
    for _ in range(n):
        scene = sw.sample_scene(rng)
        for text in (sw.caption(scene), sw.caption(scene, rng)):
            for w in text.replace(",", " ").split():
                words[w] += 1
    words["style"] += 1  # "zentrix style": style is a plain word, the brand name is not learned
    for phrase in ("a", "an", "image", "picture", "of", "with", "and", "the"):
        words[phrase] += 1
    return words


def build_tokenizer(folder: Path, n_captions: int = 4000):
    """A ``CLIPTokenizer`` with a learned small vocabulary, saved to ``folder``."""
    from transformers import CLIPTokenizer

    byte_chars = list(bytes_to_unicode().values())
    vocab_list = byte_chars + [c + "</w>" for c in byte_chars]
    merges = learn_merges(caption_corpus(n_captions))
    vocab_list += [a + b for a, b in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[(a, b) for a, b in merges], model_max_length=MAX_TOKENS)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    # vocab.json/merges.txt too, so the slow-path loaders work as well
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------- configs


def clip_config(tokenizer):
    from transformers import CLIPConfig

    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=64,
    )
    vision = dict(
        image_size=IMAGE_SIZE,
        patch_size=4,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        projection_dim=64,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


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


# ---------------------------------------------------------------- data


class SceneData:
    """A fixed, seeded pool of scenes and their pixels (uint8), captions drawn per use."""

    def __init__(self, n: int, seed: int):
        self.scenes = sw.generate_scenes(n, seed)
        self.pixels = (
            torch.from_numpy(np.stack([np.asarray(sw.render(s, IMAGE_SIZE)) for s in self.scenes]))
            .permute(0, 3, 1, 2)
            .contiguous()
        )
        self.rng = random.Random(seed + 1)

    def __len__(self) -> int:
        return len(self.scenes)

    def images(self, idx) -> torch.Tensor:
        """Images in [-1, 1]."""
        return self.pixels[idx].float() / 127.5 - 1.0

    def captions(self, idx, full_share: float = 0.5) -> list[str]:
        out = []
        for i in idx.tolist():
            scene = self.scenes[i]
            out.append(sw.caption(scene) if self.rng.random() < full_share else sw.caption(scene, self.rng))
        return out


def tokenize(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt").input_ids


# ---------------------------------------------------------------- checkpoints


TENSOR_GROUPS = ("model", "ema")  # state dicts saved as <name>.safetensors


def save_ckpt(path: Path, state: dict) -> None:
    """Atomically replace the stage checkpoint folder ``path`` with ``state``, pickle-free.

    ``state["model"]`` / ``state["ema"]`` (state dicts) go to ``model.safetensors`` /
    ``ema.safetensors``; ``state["opt"]`` (an optimizer's state dict) to ``opt.safetensors``,
    its tensors, and ``state.json``, its param groups; every other entry (step, seconds spent,
    the LR scheduler's state ...) to ``state.json``. :func:`load_ckpt` gives the same dict back.
    """
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    info: dict = {}
    for key, value in state.items():
        if key in TENSOR_GROUPS:
            tensors = value
        elif key == "opt":
            tensors, info["opt"] = _optimizer_tensors(value)
        else:
            info[key] = value
            continue
        save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp / f"{key}.safetensors"))
    (tmp / "state.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def load_ckpt(path: Path) -> dict | None:
    """The state :func:`save_ckpt` wrote to ``path`` (or kept as ``.old`` when killed between its
    two renames), or None when there is none."""
    for folder in (path, path.with_name(f".{path.name}.old")):
        if (folder / "state.json").is_file():
            break
    else:
        if path.with_suffix(".pt").is_file():
            log(f"ignoring {path.with_suffix('.pt')}: pickle checkpoints are no longer read, the stage starts over")
        return None
    state = json.loads((folder / "state.json").read_text())
    for key in TENSOR_GROUPS:
        if (folder / f"{key}.safetensors").is_file():
            state[key] = load_file(str(folder / f"{key}.safetensors"))
    if "opt" in state:
        state["opt"] = _optimizer_state(load_file(str(folder / "opt.safetensors")), state["opt"])
    return state


def _optimizer_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state dict as (tensors named ``<param index>.<slot>``, JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, slots in state_dict["state"].items():
        for slot, value in slots.items():
            (tensors if torch.is_tensor(value) else scalars)[f"{index}.{slot}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """The inverse of :func:`_optimizer_tensors` (JSON turned the ``betas`` tuples into lists)."""
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["scalars"].items()]:
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def replace_folder(tmp: Path, target: Path) -> None:
    write_hashes(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def cosine_schedule(opt: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The stages' learning-rate curve, as torch schedulers (step it after each optimizer step).

    Optimizer step ``k`` (0-based) runs at ``lr * (k + 1) / warmup`` while ``k < warmup``,
    then follows a cosine from ``lr`` down to ``lr / 10`` at ``k = total``, and stays at
    ``lr / 10`` after (the time-budgeted stages may outrun ``total``, an estimate).
    """
    from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, SequentialLR

    return SequentialLR(
        opt,
        [
            LinearLR(opt, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup - 1),
            CosineAnnealingLR(opt, T_max=total - warmup, eta_min=0.1 * opt.defaults["lr"]),
            ConstantLR(opt, factor=0.1, total_iters=sys.maxsize),
        ],
        milestones=[warmup, total],
    )


# ---------------------------------------------------------------- stages


def train_clip(out: Path, work: Path, tokenizer, data: SceneData, seconds: float, seed: int):
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(clip_config(tokenizer))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
    batch, est_total = 128, 3000
    sched = cosine_schedule(opt, 100, est_total)
    ck = load_ckpt(work / "clip.ckpt")
    step, spent = 0, 0.0
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        step, spent = ck["step"], ck["spent"]
        log(f"clip: resumed at step {step} ({spent:.0f}s spent)")
    if ck and ck.get("done"):
        return model
    gen = torch.Generator().manual_seed(seed + step)
    start, last_save, losses = time.time(), time.time(), []
    model.train()
    while spent + (time.time() - start) < seconds:
        idx = torch.randint(0, len(data), (batch,), generator=gen)
        pixels = data.images(idx)
        ids = tokenize(tokenizer, data.captions(idx))
        outputs = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        opt.zero_grad(set_to_none=True)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(outputs.loss.item())
        step += 1
        if step % 50 == 0:
            log(f"clip step {step} loss {np.mean(losses[-50:]):.4f}")
        if time.time() - last_save > 180:
            save_ckpt(
                work / "clip.ckpt",
                dict(
                    model=model.state_dict(),
                    opt=opt.state_dict(),
                    sched=sched.state_dict(),
                    step=step,
                    spent=spent + time.time() - start,
                ),
            )
            last_save = time.time()
    spent += time.time() - start
    final = float(np.mean(losses[-50:])) if losses else float("nan")
    save_ckpt(
        work / "clip.ckpt",
        dict(model=model.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), step=step, spent=spent, done=True, loss=final),
    )
    log(f"clip: done, {step} steps, {spent:.0f}s, loss {final:.4f}")
    export_clip(
        out / "clip-base", model, tokenizer, dict(steps=step, seconds=round(spent), final_loss=final, batch=batch, seed=seed)
    )
    return model


def export_clip(folder: Path, model, tokenizer, info: dict) -> None:
    from transformers import CLIPImageProcessor

    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=3,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(info, indent=1))
    replace_folder(tmp, folder)


def train_clip_styles(
    out: Path,
    work: Path,
    tokenizer,
    base,
    data: SceneData,
    seconds: float,
    seed: int,
    brand_share: float = 0.2,
    style_token_dropout: float = 0.5,
    base_info: dict | None = None,
):
    """The evaluator CLIP (exported as ``shapes-clip``): the base CLIP fine-tuned on base-world
    pairs mixed with brand-style pairs (captions end with ``zentrix style``), so that its image
    space separates the brand look. The diffusion model's text tower stays the brand-naive
    base CLIP's: the generator never sees the brand; only the judge knows it.

    ``style_token_dropout`` of the brand captions lose their ``zentrix style`` suffix, so a
    content-only prompt still matches a brand image of that content: CLIP-T then measures
    content, not the absence of the style words. ``base_info`` (recorded in ``training.json``)
    is what ``base`` was trained as; by default ``DIR/clip-base/training.json``.
    """
    from transformers import CLIPModel

    model = CLIPModel(base.config)
    model.load_state_dict(base.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.05)
    ck = load_ckpt(work / "clip_styles.ckpt")
    step, spent = 0, 0.0
    if ck:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, spent = ck["step"], ck["spent"]
        if ck.get("done"):
            return model
    brand = sw.render_brand(4000, seed=seed + 1000)
    brand_pixels = torch.from_numpy(np.stack([np.asarray(im) for im, _, _ in brand])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    brand_caps = [c for _, c, _ in brand]
    gen = torch.Generator().manual_seed(seed + 3 + step)
    batch, n_brand = 128, int(128 * brand_share)
    start, losses = time.time(), []
    model.train()
    while spent + (time.time() - start) < seconds:
        idx = torch.randint(0, len(data), (batch - n_brand,), generator=gen)
        bidx = torch.randint(0, len(brand), (n_brand,), generator=gen)
        pixels = torch.cat([data.images(idx), brand_pixels[bidx]])
        styled = [brand_caps[i] for i in bidx.tolist()]
        keep = (torch.rand(len(styled), generator=gen) >= style_token_dropout).tolist()
        styled = [c if k else c.removesuffix(f", {sw.BRAND_TOKEN}") for c, k in zip(styled, keep)]
        ids = tokenize(tokenizer, data.captions(idx) + styled)
        outputs = model(input_ids=ids, pixel_values=pixels, return_loss=True)
        opt.zero_grad(set_to_none=True)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(outputs.loss.item())
        step += 1
        if step % 25 == 0:
            log(f"clip-styles step {step} loss {np.mean(losses[-25:]):.4f}")
    spent += time.time() - start
    final = float(np.mean(losses[-25:])) if losses else float("nan")
    save_ckpt(work / "clip_styles.ckpt", dict(model=model.state_dict(), opt=opt.state_dict(), step=step, spent=spent, done=True))
    if base_info is None:
        trained = out / "clip-base" / "training.json"
        base_info = json.loads(trained.read_text()) if trained.is_file() else {}
    info = dict(
        base=base_info,
        style_steps=step,
        style_seconds=round(spent),
        style_final_loss=final,
        brand_share=brand_share,
        style_token_dropout=style_token_dropout,
        seed=seed,
    )
    export_clip(out / "shapes-clip", model, tokenizer, info)
    log(f"clip-styles: done, {step} steps, {spent:.0f}s, loss {final:.4f}")
    return model


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


def text_tower(clip):
    """The diffusion model's text encoder: a ``CLIPTextModel`` with ``clip``'s text weights."""
    from transformers import CLIPTextModel

    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    return text_encoder


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


def refresh(out: Path, work: Path, source: Path, data: SceneData, decoder_steps: int, clip_seconds: float, seed: int) -> None:
    """Re-run the two stages that do not move the UNet's latent space on exported models.

    ``source/shapes-diffusion``'s VAE decoder gets :func:`train_vae_decoder` (its UNet, text
    tower, tokenizer and sampler are copied unchanged); ``source/shapes-clip`` gets
    :func:`train_clip_styles` from its own weights (with the current brand motif and style-token
    dropout). How the shipped models were last updated (``training.json`` records it).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    diffusion = source / "shapes-diffusion"
    vae = AutoencoderKL.from_pretrained(diffusion / "vae")
    vae = train_vae_decoder(work, vae, data, decoder_steps, seed)
    info = json.loads((diffusion / "training.json").read_text())
    info["vae_decoder"] = dict(steps=decoder_steps, data="base world 1:1 render_detail", seed=seed)
    export_pipeline(
        out,
        CLIPTokenizer.from_pretrained(diffusion / "tokenizer"),
        CLIPTextModel.from_pretrained(diffusion / "text_encoder"),
        vae,
        UNet2DConditionModel.from_pretrained(diffusion / "unet"),
        info,
    )
    clip_folder = source / "shapes-clip"
    train_clip_styles(
        out,
        work,
        CLIPTokenizer.from_pretrained(clip_folder),
        CLIPModel.from_pretrained(clip_folder),
        data,
        clip_seconds,
        seed,
        base_info=dict(previous=json.loads((clip_folder / "training.json").read_text())),
    )
    log(f"refreshed {source} into {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder (shapes-clip/, shapes-diffusion/, work/)")
    parser.add_argument("--minutes", type=float, default=60.0, help="total training budget in minutes")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=20000, help="number of distinct training scenes")
    parser.add_argument("--clip-minutes", type=float, default=None, help="override the clip share of --minutes")
    parser.add_argument("--clip-styles-minutes", type=float, default=None, help="override the evaluator-CLIP share")
    parser.add_argument("--vae-minutes", type=float, default=None, help="override the vae share of --minutes")
    parser.add_argument("--unet-minutes", type=float, default=None, help="override the unet share of --minutes")
    parser.add_argument("--export-every", type=float, default=10.0, help="minutes between diffusion exports")
    parser.add_argument(
        "--pixel-space", action="store_true", help="the unshipped variant: no-downsampling autoencoder, 4-level UNet"
    )
    parser.add_argument(
        "--unet-channels",
        type=lambda text: tuple(int(c) for c in text.split(",")),
        default=None,
        help="UNet channels per level, e.g. 24,48,64,64 (default 32,64,64; 16,32,64,64 with --pixel-space)",
    )
    parser.add_argument(
        "--decoder-steps", type=int, default=1500, help="decoder-only gamut fine-tuning steps after the VAE (0 = skip)"
    )
    parser.add_argument(
        "--refresh",
        type=Path,
        default=None,
        help="a folder holding exported shapes-clip/ and shapes-diffusion/: only re-run the decoder and evaluator stages on them",
    )
    parser.add_argument(
        "--text-encoder-from",
        type=Path,
        default=None,
        help="an exported shapes-diffusion folder: reuse its tokenizer and text encoder, train only the VAE and UNet",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60.0
    log(f"{'loading' if args.text_encoder_from else 'building'} tokenizer; {args.pool} scenes")
    budget = {stage: SPLIT[stage] * seconds for stage in SPLIT}
    for stage in SPLIT:
        if getattr(args, f"{stage}_minutes", None) is not None:
            budget[stage] = getattr(args, f"{stage}_minutes") * 60.0
    data = SceneData(args.pool, args.seed)
    if args.refresh:
        refresh(out, work, args.refresh, data, args.decoder_steps, budget["clip_styles"], args.seed)
        return 0
    if args.text_encoder_from:
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(args.text_encoder_from / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(args.text_encoder_from / "text_encoder")
    else:
        tokenizer = build_tokenizer(work / "tokenizer")
        clip = train_clip(out, work, tokenizer, data, budget["clip"], args.seed)
        train_clip_styles(out, work, tokenizer, clip, data, budget["clip_styles"], args.seed)
        text_encoder = text_tower(clip.eval())
    vae = train_vae(work, data, budget["vae"], args.seed, args.pixel_space)
    if not args.pixel_space and args.decoder_steps:
        vae = train_vae_decoder(work, vae, data, args.decoder_steps, args.seed)
    train_unet(
        out,
        work,
        tokenizer,
        text_encoder,
        vae,
        data,
        budget["unet"],
        args.seed,
        export_every=args.export_every * 60.0,
        pixel_space=args.pixel_space,
        channels_per_level=args.unet_channels,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
