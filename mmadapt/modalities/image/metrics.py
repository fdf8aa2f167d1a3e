"""Image metrics: CLIP-I style consistency, CLIP-T prompt alignment, palette adherence.

* **CLIP-I** (style consistency): for each generated image, the mean cosine similarity
  of its CLIP image embedding to the embeddings of a brand reference set; the metric is
  the mean over images. Higher = closer to the brand's look.
* **CLIP-T** (prompt alignment): cosine similarity of each image's CLIP embedding to its
  prompt's CLIP text embedding; the metric is the mean over images.
* **Palette adherence** needs no learned weights: every pixel is converted to CIELAB
  (sRGB, D65), its CIE76 distance ΔE to the *nearest* palette colour is taken, and mapped
  to ``max(0, 1 - ΔE / max_delta_e)`` (``max_delta_e`` = 50 by default: ΔE ≈ 2 is a
  just-noticeable difference, ΔE ≥ 50 is a different colour family). The image's score is
  the mean over its pixels, so 1.0 = every pixel exactly a palette colour, 0.0 = every
  pixel at least ``max_delta_e`` away from all of them. Anti-aliased edges between two
  palette colours cost a little; that is intended.

CLIP models are wrapped by :class:`ClipEmbedder`, built from a transformers CLIP folder
(``ClipEmbedder.from_pretrained``, e.g. the embedded ``shapes-clip``) or from an
open_clip model (``ClipEmbedder.from_open_clip``). All metric functions are pure: same
inputs, same numbers; nothing is written except by :func:`contact_sheet`.
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from mmadapt.errors import DataError

DEFAULT_MAX_DELTA_E = 50.0

# ---------------------------------------------------------------- colour


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    text = str(value).strip().lstrip("#")
    if len(text) != 6 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise DataError(f"not a #RRGGBB colour: {value!r}", fix="write palette colours as hex strings like '#FF6F61'")
    return (int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16))


def load_palette(path: str | Path) -> list[tuple[int, int, int]]:
    """Read ``palette.json``: a list of hex strings, or an object whose values are hex strings
    (optionally under a ``"colors"`` key)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("palette file not found", path=str(path), fix="point to a palette.json of hex colours") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {exc.start})", path=str(path), fix="save it as UTF-8") from None
    except OSError as exc:
        raise DataError(
            f"cannot read the palette ({exc.strerror})", path=str(path), fix="point to a palette.json of hex colours"
        ) from None
    except ValueError as exc:
        raise DataError(
            f"not valid JSON ({exc.msg}, line {exc.lineno})", path=str(path), fix="write a JSON list of '#RRGGBB' strings"
        ) from None
    if isinstance(data, dict) and "colors" in data:
        data = data["colors"]
    values = list(data.values()) if isinstance(data, dict) else data
    if not isinstance(values, list) or not values:
        raise DataError(
            "palette is empty or not a list/object of colours", path=str(path), fix="write a JSON list of '#RRGGBB' strings"
        )
    try:
        return [hex_to_rgb(v) for v in values]
    except DataError as exc:
        raise DataError(exc.message, path=str(path), fix=exc.fix) from None


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8 or floats 0..255, shape ``(..., 3)``) -> CIELAB (D65), shape ``(..., 3)``."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T / np.array([0.95047, 1.0, 1.08883])
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
    return lab


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64).reshape(-1, 3)
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (..., 3), got shape {arr.shape}")
    return arr.reshape(-1, 3)


def nearest_palette_delta_e(image: Image.Image | np.ndarray, palette: Sequence[tuple[int, int, int] | str]) -> np.ndarray:
    """Per pixel, the CIE76 ΔE to the nearest palette colour (flat array, one value per pixel)."""
    colours = [hex_to_rgb(p) if isinstance(p, str) else tuple(p) for p in palette]
    if not colours:
        raise ValueError("palette is empty")
    lab = rgb_to_lab(_pixels(image))
    pal = rgb_to_lab(np.asarray(colours, dtype=np.float64))
    dist = np.sqrt(((lab[:, None, :] - pal[None, :, :]) ** 2).sum(-1))
    return dist.min(axis=1)


def palette_adherence(
    image: Image.Image | np.ndarray, palette: Sequence[tuple[int, int, int] | str], *, max_delta_e: float = DEFAULT_MAX_DELTA_E
) -> float:
    """Mean over pixels of ``max(0, 1 - ΔE_nearest / max_delta_e)``: 1 = on palette, 0 = far from it."""
    if max_delta_e <= 0:
        raise ValueError("max_delta_e must be positive")
    de = nearest_palette_delta_e(image, palette)
    return float(np.clip(1.0 - de / max_delta_e, 0.0, 1.0).mean())


def palette_adherence_scores(images: Sequence[Image.Image], palette, *, max_delta_e: float = DEFAULT_MAX_DELTA_E) -> list[float]:
    return [palette_adherence(im, palette, max_delta_e=max_delta_e) for im in images]


# ---------------------------------------------------------------- CLIP


@dataclass
class ClipEmbedder:
    """Normalised CLIP embeddings of images and texts, whatever the CLIP implementation.

    ``image_fn`` maps a list of PIL images to a ``(N, D)`` tensor, ``text_fn`` a list of
    strings to ``(N, D)``; both are L2-normalised here.
    """

    image_fn: Callable[[list[Image.Image]], torch.Tensor]
    text_fn: Callable[[list[str]], torch.Tensor]
    batch_size: int = 64

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        chunks = [
            self.image_fn([im.convert("RGB") for im in images[i : i + self.batch_size]])
            for i in range(0, len(images), self.batch_size)
        ]
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        chunks = [self.text_fn(list(texts[i : i + self.batch_size])) for i in range(0, len(texts), self.batch_size)]
        return torch.nn.functional.normalize(torch.cat(chunks).float(), dim=-1)

    @classmethod
    def from_transformers(
        cls, model, tokenizer, *, image_size: int | None = None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    ) -> ClipEmbedder:
        """Wrap a ``transformers.CLIPModel`` and its tokenizer (images resized to the model's size)."""
        size = image_size or int(model.config.vision_config.image_size)
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        max_len = int(model.config.text_config.max_position_embeddings)

        @torch.no_grad()
        def image_fn(images: list[Image.Image]) -> torch.Tensor:
            arr = np.stack(
                [np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255.0 for im in images]
            )
            pixels = (torch.from_numpy(arr).permute(0, 3, 1, 2) - mean_t) / std_t
            return _as_tensor(model.get_image_features(pixel_values=pixels))

        @torch.no_grad()
        def text_fn(texts: list[str]) -> torch.Tensor:
            batch = tokenizer(texts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
            return _as_tensor(model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask))

        model.eval()
        return cls(image_fn, text_fn)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ClipEmbedder:
        """Load a transformers CLIP folder (e.g. ``embedded_shapes_clip()``) offline."""
        from transformers import CLIPModel, CLIPTokenizer

        folder = Path(folder)
        model = CLIPModel.from_pretrained(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        proc = folder / "preprocessor_config.json"
        if proc.is_file():
            cfg = json.loads(proc.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        return cls.from_transformers(model, tokenizer, mean=mean, std=std)

    @classmethod
    def from_open_clip(cls, model, preprocess, tokenizer) -> ClipEmbedder:
        """Wrap an open_clip model with its preprocess transform and tokenizer."""

        @torch.no_grad()
        def image_fn(images: list[Image.Image]) -> torch.Tensor:
            return model.encode_image(torch.stack([preprocess(im) for im in images]))

        @torch.no_grad()
        def text_fn(texts: list[str]) -> torch.Tensor:
            return model.encode_text(tokenizer(texts))

        model.eval()
        return cls(image_fn, text_fn)


def _as_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot read embeddings from {type(out).__name__}")


def clip_i_scores(
    images: Sequence[Image.Image], references: Sequence[Image.Image], embedder: ClipEmbedder, *, exclude_self: bool = False
) -> list[float]:
    """Per image, mean cosine similarity to the reference set.

    ``exclude_self=True`` is for scoring the reference set against itself: image ``i``
    is not compared with reference ``i`` (requires the two lists to be the same images).
    """
    if not images:
        return []
    if not references:
        raise ValueError("the reference set is empty")
    sims = embedder.embed_images(images) @ embedder.embed_images(references).T
    if exclude_self:
        if len(images) != len(references) or len(references) < 2:
            raise ValueError("exclude_self needs the same list of at least two images on both sides")
        sims = sims.masked_fill(torch.eye(len(images), dtype=torch.bool), float("nan"))
        return torch.nanmean(sims, dim=1).tolist()
    return sims.mean(dim=1).tolist()


def clip_i(
    images: Sequence[Image.Image], references: Sequence[Image.Image], embedder: ClipEmbedder, *, exclude_self: bool = False
) -> float:
    """CLIP-I style consistency: mean over images of their mean cosine to the references."""
    scores = clip_i_scores(images, references, embedder, exclude_self=exclude_self)
    return float(np.mean(scores)) if scores else float("nan")


def clip_t_scores(images: Sequence[Image.Image], prompts: Sequence[str], embedder: ClipEmbedder) -> list[float]:
    """Per image, cosine similarity of the image to its own prompt."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        return []
    return (embedder.embed_images(images) * embedder.embed_texts(prompts)).sum(-1).tolist()


def clip_t(images: Sequence[Image.Image], prompts: Sequence[str], embedder: ClipEmbedder) -> float:
    """CLIP-T prompt alignment: mean cosine of each image to its prompt."""
    scores = clip_t_scores(images, prompts, embedder)
    return float(np.mean(scores)) if scores else float("nan")


def clip_t_retrieval_accuracy(images: Sequence[Image.Image], prompts: Sequence[str], embedder: ClipEmbedder) -> float:
    """Share of images whose own prompt is the most similar among all the prompts given."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not images:
        return float("nan")
    sims = embedder.embed_images(images) @ embedder.embed_texts(prompts).T
    return float((sims.argmax(dim=1) == torch.arange(len(images))).float().mean())


# ---------------------------------------------------------------- contact sheet


def wrap_caption(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken between words; a word longer than
    ``width`` on its own is the only thing cut (a contact sheet cell has a fixed width)."""
    return textwrap.wrap(" ".join(text.split()), width, break_long_words=True, break_on_hyphens=False) or [""]


def contact_sheet(
    images: Sequence[Image.Image],
    captions: Sequence[str] | None,
    path: str | Path,
    *,
    columns: int | None = None,
    scale: int = 4,
    caption_height: int = 24,
) -> Path:
    """Write a PNG grid of ``images`` (upscaled ``scale`` times, nearest) with wrapped captions under each."""
    if not images:
        raise ValueError("no images to put on a contact sheet")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    columns = columns or min(len(images), 8)
    rows = math.ceil(len(images) / columns)
    cell_w = max(im.width for im in images) * scale
    cell_h = max(im.height for im in images) * scale
    text_h = caption_height if captions is not None else 0
    pad = 4
    sheet = Image.new("RGB", (columns * (cell_w + pad) + pad, rows * (cell_h + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(8, cell_w // 6)
    for i, im in enumerate(images):
        x = pad + (i % columns) * (cell_w + pad)
        y = pad + (i // columns) * (cell_h + text_h + pad)
        sheet.paste(im.convert("RGB").resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST), (x, y))
        if captions is not None:
            text = str(captions[i])
            lines = wrap_caption(text, chars)[: max(1, text_h // 11)]
            for k, line in enumerate(lines):
                draw.text((x, y + cell_h + 1 + 11 * k), line, fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")
    return path
