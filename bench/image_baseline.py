"""Baseline of the embedded image models against the brand-style set.

    python bench/image_baseline.py [--out runs/bench/image_baseline] [--steps 25] [--guidance 5.0] [--diffusion DIR]

Generates, with the embedded ``shapes-diffusion`` (no adaptation):

* ``base``: one image per brand eval prompt (``datasets/brand-style/prompts.jsonl``,
  content only, no style words) — what an unadapted model gives for the brand's prompts;
* ``captioned``: one image per full shapes-world caption of 16 seeded scenes — how well
  the base model follows its own grammar, compared with the true renders of those scenes.

Then scores, with the embedded ``shapes-clip`` and the brand palette:

* palette adherence (weight-free, CIELAB ΔE to the nearest brand colour), CLIP-I
  (mean cosine to the 24 brand reference images) and style-T (cosine to the text
  "zentrix style") of: base samples, the brand references
  themselves (leave-one-out), 24 *held-out* brand renders, real base-world renders, and the
  references encoded and decoded by the pipeline's VAE (the ceiling of any denoiser adaptation);
* CLIP-T (image-prompt cosine) and top-1 prompt retrieval of the captioned samples vs
  the true renders, and scene-colour adherence (palette = the caption's colours).

Prints a table and writes ``OUT/image_baseline.json`` and contact sheets ``OUT/*.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmadapt.modalities.image import metrics as ev  # noqa: E402
from mmadapt.models import shapes  # noqa: E402
from tools import shapes_world as sw  # noqa: E402

BRAND = ROOT / "datasets" / "brand-style"


def scene_colours(scene: sw.Scene) -> list[tuple[int, int, int]]:
    cols = [sw.BASE_PALETTE[scene.color], sw.BASE_PALETTE[scene.background]]
    if scene.texture != "plain":
        cols.append(sw._texture_rgb(scene))
    return cols


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "image_baseline")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--diffusion", type=Path, default=None, help="a shapes-diffusion folder to score instead of the shipped one"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    refs = [
        Image.open(BRAND / json.loads(line)["file_name"]).convert("RGB")
        for line in (BRAND / "captions.jsonl").read_text().splitlines()
    ]
    palette = ev.load_palette(BRAND / "palette.json")
    prompts = [json.loads(line)["prompt"] for line in (BRAND / "prompts.jsonl").read_text().splitlines()]
    held_out = [im for im, _, _ in sw.render_brand(24, seed=999)]
    scenes = sw.generate_scenes(16, seed=4242)
    captions = [sw.caption(s) for s in scenes]
    truth = [sw.render(s) for s in scenes]
    world = [im for im, _ in sw.generate(24, seed=31337)]

    diffusion = args.diffusion or shapes.embedded_shapes_diffusion()
    pipe = shapes.load_shapes_pipeline(diffusion)
    pipe.set_progress_bar_config(disable=True)
    emb = ev.ClipEmbedder.from_pretrained(shapes.embedded_shapes_clip())

    def sample(texts: list[str]) -> list[Image.Image]:
        g = torch.Generator().manual_seed(args.seed)
        return pipe(texts, num_inference_steps=args.steps, guidance_scale=args.guidance, generator=g).images

    @torch.no_grad()
    def through_vae(images: list[Image.Image]) -> list[Image.Image]:
        """Encode (posterior mean) and decode: the best any denoiser can do with this VAE."""
        x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images])).permute(0, 3, 1, 2)
        y = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        return [Image.fromarray(((a.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for a in y]

    t0 = time.time()
    base = sample(prompts)
    captioned = sample(captions)
    gen_seconds = time.time() - t0

    def row(name: str, images: list[Image.Image], exclude_self: bool = False) -> dict:
        pal = ev.palette_adherence_scores(images, palette)
        cli = ev.clip_i_scores(images, refs, emb, exclude_self=exclude_self)
        style_t = ev.clip_t_scores(images, [sw.BRAND_TOKEN] * len(images), emb)
        return {
            "set": name,
            "n": len(images),
            "palette": float(np.mean(pal)),
            "palette_min": float(np.min(pal)),
            "palette_max": float(np.max(pal)),
            "clip_i": float(np.mean(cli)),
            "clip_i_min": float(np.min(cli)),
            "clip_i_max": float(np.max(cli)),
            "style_t": float(np.mean(style_t)),
        }

    style = [
        row("base samples (brand prompts)", base),
        row("base samples (full captions)", captioned),
        row("base-world renders", world),
        row("brand references (leave-one-out)", refs, exclude_self=True),
        row("held-out brand renders", held_out),
        row("brand references through the VAE", through_vae(refs)),
    ]
    follow = {
        "clip_t_samples": ev.clip_t(captioned, captions, emb),
        "clip_t_truth": ev.clip_t(truth, captions, emb),
        "clip_t_brand_prompts_samples": ev.clip_t(base, prompts, emb),
        "retrieval_top1_samples": ev.clip_t_retrieval_accuracy(captioned, captions, emb),
        "retrieval_top1_truth": ev.clip_t_retrieval_accuracy(truth, captions, emb),
        "scene_colour_adherence_samples": float(
            np.mean([ev.palette_adherence(im, scene_colours(s)) for im, s in zip(captioned, scenes)])
        ),
        "scene_colour_adherence_truth": float(
            np.mean([ev.palette_adherence(im, scene_colours(s)) for im, s in zip(truth, scenes)])
        ),
        "scene_colour_adherence_shuffled": float(
            np.mean([ev.palette_adherence(im, scene_colours(s)) for im, s in zip(captioned, scenes[1:] + scenes[:1])])
        ),
    }
    training = json.loads((diffusion / "training.json").read_text())
    result = {
        "steps": args.steps,
        "guidance": args.guidance,
        "seed": args.seed,
        "generation_seconds": round(gen_seconds, 2),
        "diffusion_training": training,
        "style": style,
        "prompt_following": follow,
    }
    (args.out / "image_baseline.json").write_text(json.dumps(result, indent=1))
    ev.contact_sheet(base, prompts, args.out / "base_brand_prompts.png", columns=8, scale=4, caption_height=36)
    ev.contact_sheet(
        captioned + truth,
        captions + ["(truth) " + c for c in captions],
        args.out / "base_captions_vs_truth.png",
        columns=8,
        scale=4,
        caption_height=48,
    )
    ev.contact_sheet(refs, None, args.out / "brand_references.png", columns=8, scale=4)

    print(f"generation: {len(base) + len(captioned)} images, {args.steps} steps, guidance {args.guidance}: {gen_seconds:.1f}s")
    print(f"{'set':36s} {'palette':>8s} {'(min..max)':>14s} {'CLIP-I':>8s} {'(min..max)':>14s} {'style-T':>8s}")
    for r in style:
        print(
            f"{r['set']:36s} {r['palette']:8.3f} {r['palette_min']:6.3f}..{r['palette_max']:.3f} {r['clip_i']:8.3f} {r['clip_i_min']:6.3f}..{r['clip_i_max']:.3f} {r['style_t']:8.3f}"
        )
    for key, value in follow.items():
        print(f"{key:36s} {value:8.3f}")
    print(f"wrote {args.out / 'image_baseline.json'} and contact sheets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
