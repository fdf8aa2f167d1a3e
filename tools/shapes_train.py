"""Train the embedded shapes-world models: ``shapes-clip`` and ``shapes-diffusion``.

From the repository root (``tools`` is not installed; see ``tools/README.md``)::

    python -m tools.shapes_train --out DIR --minutes 60 [--threads 1] [--seed 0]

Stages, each resumable from its checkpoint ``DIR/work/<stage>.ckpt/`` (weights and optimizer
moments as safetensors, the rest as ``state.json``; re-run the same command). Stages 1-2 live in
:mod:`tools.shapes_text`, 3 in :mod:`tools.shapes_vae`, 4 and the export in
:mod:`tools.shapes_unet`; :mod:`tools.shapes_common` holds what they share; this module runs them:

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
import sys
from pathlib import Path

import torch

from tools.shapes_common import SceneData, log
from tools.shapes_text import build_tokenizer, text_tower, train_clip, train_clip_styles
from tools.shapes_unet import export_pipeline, train_unet
from tools.shapes_vae import train_vae, train_vae_decoder

SPLIT = {"clip": 0.14, "clip_styles": 0.04, "vae": 0.07, "unet": 0.75}


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
