"""Can a brand-naive VAE decoder raise the image ceiling? (a measurement, nothing is shipped)

    python bench/vae_decoder_gamut.py [--data gamut|gamut-border|brand] [--steps 900] [--train-encoder]

Starts from the shipped ``shapes-diffusion`` VAE and fine-tunes its decoder (and
``post_quant_conv``; the encoder and ``quant_conv`` stay frozen unless ``--train-encoder``,
so the latent space the UNet learned is unchanged) on 16x16 crops (even offsets, so they
align with the latent grid) of a 50/50 mix of ordinary base-world renders and:

* ``gamut``: the shapes world drawn with colours uniform over the RGB cube (shape,
  background and texture colour each drawn independently; no brand palette, no border):
  the brand-naive candidate;
* ``gamut-border``: the same plus, on half of them, the double-border motif in a random
  colour (diagnostic only: the base model must not learn the brand motif);
* ``brand``: brand renders of another seed (diagnostic only: an upper bound that tells
  whether the frozen encoder's latents hold the brand look at all).

Prints, before and during training: the 24 brand references encoded (posterior mean) and
decoded, scored for palette adherence and CLIP-I (as ``bench/image_baseline.py``'s VAE
row), their reconstruction MSE (whole image and the 16x16 interior, i.e. without the
5-px border frame), and base-world reconstruction MSE (256 renders, seed 31337). Writes
``OUT/vae_decoder_gamut.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmadapt.evaluation import image as ev  # noqa: E402
from mmadapt.image import shapes_world as sw  # noqa: E402
from mmadapt.models import shapes  # noqa: E402

BRAND = ROOT / "datasets" / "brand-style"


class _Recoloured(sw.Scene):
    """A scene whose colour names map to arbitrary RGB (``extra["rgb"]``)."""

    def rgb(self, name: str) -> tuple[int, int, int]:
        return self.extra["rgb"][name]


def gamut_render(rng: random.Random, border: bool) -> Image.Image:
    """A base-world scene with every colour drawn uniformly from the RGB cube."""

    def colour() -> tuple[int, int, int]:
        return tuple(rng.randrange(256) for _ in range(3))  # type: ignore[return-value]

    s = sw.sample_scene(rng)
    fields = {f.name: getattr(s, f.name) for f in dataclasses.fields(s) if f.name != "extra"}
    # brand=True only routes the texture colour through texture_color (an independent colour);
    # the border is drawn below, or not at all
    fields.update(brand=True, texture_color="texture")
    rgb = {name: colour() for name in sw.BASE_PALETTE} | {"texture": colour()}
    scene = _Recoloured(**fields, extra={"rgb": rgb})
    side = sw.DEFAULT_SIZE * sw.SUPERSAMPLE
    bg = scene.rgb(scene.background)
    image = Image.new("RGB", (side, side), bg)
    draw = ImageDraw.Draw(image)
    sw._draw_texture(draw, scene, side)
    centers, radius = sw._centers(scene)
    for fx, fy in centers:
        sw._draw_shape(draw, scene.shape, fx * side, fy * side, radius * side, scene.rotation, scene.rgb(scene.color), bg)
    if border and rng.random() < 0.5:
        sw._draw_double_border(draw, colour(), bg, side)
    return image.resize((sw.DEFAULT_SIZE, sw.DEFAULT_SIZE), Image.Resampling.BOX)


def to_tensor(images) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 127.5 - 1.0 for im in images])).permute(0, 3, 1, 2)


def to_images(x: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(((a.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()) for a in x.clamp(-1, 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("gamut", "gamut-border", "brand"), default="gamut")
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-encoder", action="store_true", help="unfreeze the encoder too (changes the latent space)")
    parser.add_argument("--pool", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "vae_decoder_gamut")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    from diffusers import AutoencoderKL

    refs = [
        Image.open(BRAND / json.loads(line)["file_name"]).convert("RGB")
        for line in (BRAND / "captions.jsonl").read_text().splitlines()
    ]
    palette = ev.load_palette(BRAND / "palette.json")
    emb = ev.ClipEmbedder.from_pretrained(shapes.embedded_shapes_clip())
    vae = AutoencoderKL.from_pretrained(shapes.embedded_shapes_diffusion() / "vae")
    x_refs = to_tensor(refs)
    x_world = to_tensor([im for im, _ in sw.generate(256, seed=31337)])
    history = []

    @torch.no_grad()
    def measure(step: int) -> None:
        vae.eval()
        y = vae.decode(vae.encode(x_refs).latent_dist.mean).sample.clamp(-1, 1)
        yw = vae.decode(vae.encode(x_world).latent_dist.mean).sample.clamp(-1, 1)
        row = dict(
            step=step,
            refs_palette=float(np.mean(ev.palette_adherence_scores(to_images(y), palette))),
            refs_clip_i=float(np.mean(ev.clip_i_scores(to_images(y), refs, emb))),
            refs_mse=F.mse_loss(y, x_refs).item(),
            refs_interior_mse=F.mse_loss(y[:, :, 8:24, 8:24], x_refs[:, :, 8:24, 8:24]).item(),
            base_world_mse=F.mse_loss(yw, x_world).item(),
        )
        history.append(row)
        print(
            f"step {step:5d}: refs palette {row['refs_palette']:.3f} CLIP-I {row['refs_clip_i']:.3f} "
            f"mse {row['refs_mse']:.4f} (interior {row['refs_interior_mse']:.4f}); base-world mse {row['base_world_mse']:.5f}",
            flush=True,
        )

    measure(0)
    rng = random.Random(5)
    if args.data == "brand":
        extra = to_tensor([im for im, _, _ in sw.render_brand(args.pool, seed=77)])
    else:
        extra = to_tensor([gamut_render(rng, border=args.data == "gamut-border") for _ in range(args.pool)])
    base = to_tensor([sw.render(s) for s in sw.generate_scenes(args.pool, 0)])
    if not args.train_encoder:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr)
    gen = torch.Generator().manual_seed(7)
    start, losses = time.time(), []
    for step in range(args.steps):
        vae.train()
        if not args.train_encoder:
            vae.encoder.eval()
        x = torch.cat(
            [extra[torch.randint(0, len(extra), (16,), generator=gen)], base[torch.randint(0, len(base), (16,), generator=gen)]]
        )
        top, left = (2 * int(v) for v in torch.randint(0, 9, (2,), generator=gen))
        x = x[:, :, top : top + 16, left : left + 16]
        with torch.set_grad_enabled(args.train_encoder):
            post = vae.encode(x).latent_dist
            z = post.sample(gen)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / args.steps)))
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        if args.train_encoder:
            loss = loss + 1e-4 * post.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(F.mse_loss(rec, x).item())
        if (step + 1) % max(1, args.steps // 3) == 0 or step + 1 == args.steps:
            print(f"  train mse (last 100) {np.mean(losses[-100:]):.5f}, {time.time() - start:.0f}s", flush=True)
            measure(step + 1)
    result = dict(vars(args) | {"out": str(args.out)}, seconds=round(time.time() - start), history=history)
    (args.out / "vae_decoder_gamut.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'vae_decoder_gamut.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
