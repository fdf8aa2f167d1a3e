"""Write the brand-style reference set: images, captions, palette and eval prompts.

    python datasets/brand-style/make_dataset.py [--out datasets/brand-style]

Deterministic: the same code writes the same bytes. Images come from
``tools.shapes_world.render_brand`` (brand palette + double-border motif, never
produced by the base shapes world); eval prompts name content only (count, shape,
placement) and carry no style or colour words.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tools/ is not installed: run from the checkout

from tools import shapes_world as sw  # noqa: E402

N_IMAGES = 24
N_PROMPTS = 48
IMAGE_SEED = 2024
PROMPT_SEED = 7


def eval_prompts(n: int = N_PROMPTS, seed: int = PROMPT_SEED) -> list[str]:
    """``n`` distinct content prompts, every shape at least once, no style words."""
    rng = random.Random(seed)
    prompts: list[str] = []
    shapes = list(sw.SHAPES)
    while len(prompts) < n:
        shape = shapes[len(prompts) % len(shapes)]
        count = rng.choice((1, 2, 3))
        placement = rng.choice(list(sw.SINGLE_POSITIONS) if count == 1 else list(sw.LAYOUTS))
        scene = sw.Scene(shape=shape, count=count, color="red", background="white", placement=placement)
        text = sw.content_prompt(scene)
        if text not in prompts:
            prompts.append(text)
    return prompts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (image, caption, _scene) in enumerate(sw.render_brand(N_IMAGES, seed=IMAGE_SEED, size=sw.DEFAULT_SIZE)):
        name = f"images/brand_{i:02d}.png"
        image.save(out / name, format="PNG", optimize=False)
        lines.append(json.dumps({"file_name": name, "caption": caption}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    (out / "palette.json").write_text(json.dumps({"name": "zentrix", "colors": sw.BRAND_PALETTE}, indent=1) + "\n")
    (out / "prompts.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i:02d}", "prompt": p}) + "\n" for i, p in enumerate(eval_prompts()))
    )
    print(f"wrote {N_IMAGES} images, captions.jsonl, palette.json, prompts.jsonl to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
