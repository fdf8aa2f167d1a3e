"""Image data: a folder of brand reference images (+ ``captions.jsonl``), the brand palette
(``palette.json``) and eval prompts (``prompts.jsonl`` of ``{"id", "prompt"}``).

Every reference image goes through :func:`read_image`, which either returns an RGB image
and the notes of what was converted (grayscale, CMYK, palette, 16-bit, transparency
composited over white, resized to the model's resolution) or raises a one-line
``DataError`` naming the file (corrupt, empty, not an image, too small, too large).
``mmadapt data validate`` reports the same checks for every file at once, with the
``captions.jsonl`` line where there is one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from mmadapt.errors import DataError
from mmadapt.protocols import Example

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_SIDE = 8  # pixels: smaller images carry no usable style
MAX_SIDE = 8192  # pixels per side
MAX_PIXELS = 40_000_000  # width x height: larger images are refused before decoding (decompression bombs)
CAPTIONS_FILE = "captions.jsonl"


@dataclass
class Reference:
    """One brand reference image, loaded and converted to the model's resolution."""

    id: str  # the file name relative to the references folder
    path: str
    image: Image.Image
    caption: str | None
    notes: list[str] = field(default_factory=list)  # conversions applied on load
    line: int | None = None  # its line in captions.jsonl


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info)


def read_image(path: str | Path, size: tuple[int, int] | None = None) -> tuple[Image.Image, list[str]]:
    """``(RGB image, notes)`` for an image file, resized (centre crop) to ``size`` = (width, height)
    when given; a one-line ``DataError`` for anything that is not a usable image."""
    path = Path(path)
    fix = "replace it with a valid RGB image (PNG or JPEG), or remove it"
    if not path.is_file():
        raise DataError("image not found", path=path, fix="check the file name")
    if path.stat().st_size == 0:
        raise DataError("empty image file (0 bytes)", path=path, fix=fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
                    raise DataError(
                        f"image is {width}x{height}; the limit is {MAX_SIDE} px a side and {MAX_PIXELS // 1_000_000} Mpx",
                        path=path,
                        fix="downscale it (it is resized to the model's resolution anyway)",
                    )
                opened.load()
                image = opened.copy()
                mode = opened.mode
    except DataError:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as exc:
        reason = (
            "not an image or corrupt"
            if isinstance(exc, UnidentifiedImageError)
            else f"corrupt or truncated image ({str(exc).splitlines()[0][:120]})"
        )
        raise DataError(reason, path=path, fix=fix) from None
    if min(width, height) < MIN_SIDE:
        raise DataError(f"image is {width}x{height}; references need at least {MIN_SIDE} px a side", path=path, fix=fix)
    notes: list[str] = []
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append(f"{mode} with transparency: composited over white")
        else:
            notes.append(f"{mode} (alpha fully opaque): alpha dropped")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode != "RGB":
        kind = {
            "L": "grayscale",
            "1": "1-bit",
            "P": "palette",
            "CMYK": "CMYK",
            "I;16": "16-bit grayscale",
            "I": "32-bit grayscale",
            "F": "float grayscale",
            "YCbCr": "YCbCr",
        }.get(mode, mode)
        if mode.startswith("I") or mode == "F":  # 16/32-bit: scale to 8 bit before RGB
            import numpy as np

            arr = np.asarray(image, dtype=np.float64)
            peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
            image = Image.fromarray(np.clip(np.round(arr / peak * 255.0), 0, 255).astype("uint8"), "L")
        image = image.convert("RGB")
        notes.append(f"{kind} image converted to RGB")
    if size is not None and image.size != tuple(size):
        if width < size[0] or height < size[1]:
            notes.append(f"{width}x{height} is smaller than {size[0]}x{size[1]}: upscaled")
        elif max(width, height) > 4 * max(size):
            notes.append(f"{width}x{height} downscaled to {size[0]}x{size[1]}")
        image = ImageOps.fit(image, tuple(size), method=Image.Resampling.LANCZOS)
    return image, notes


def _jsonl(path: Path, what: str) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line, object) of each good line of a JSONL file, and "line N: ..." for each bad one
    (the checks of :func:`mmadapt.engine.validate.scan_jsonl`); unreadable files raise a DataError."""
    from mmadapt.engine.validate import scan_jsonl

    found: list = []
    records = list(scan_jsonl(path, found, what=what))
    whole = [p for p in found if p.line is None]
    if whole:
        raise DataError(whole[0].message, path=path, fix=whole[0].fix)
    return records, [f"line {p.line}: {p.message}" for p in found]


def _caption_records(captions: Path | None) -> tuple[dict[str, tuple[str | None, int]], list[str]]:
    """file name (relative to the captions file's folder) -> (caption, line); and the bad lines."""
    out: dict[str, tuple[str | None, int]] = {}
    if captions is None:
        return out, []
    records, problems = _jsonl(captions, CAPTIONS_FILE)
    for number, record in records:
        name, caption = record.get("file_name"), record.get("caption")
        if not isinstance(name, str) or not name:
            problems.append(f"line {number}: 'file_name' must be a non-empty string")
        elif caption is not None and not isinstance(caption, str):
            problems.append(f"line {number}: 'caption' must be a string")
        elif str((captions.parent / name).resolve()) in out:
            problems.append(f"line {number}: duplicate file_name {name}")
        else:
            out[str((captions.parent / name).resolve())] = ((caption or "").strip() or None, number)
    return out, problems


def reference_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError("data.references must be a folder of images", path=folder, fix="point it at the folder of brand images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_references(folder: Path, captions: Path | None, size: tuple[int, int]) -> list[Reference]:
    """Every image under ``folder`` with its caption (None where captions.jsonl has none); a
    ``DataError`` listing every bad line and image at once when any is unusable."""
    files = reference_files(folder)
    if not files:
        raise DataError("no images in the references folder", path=folder, fix=f"add brand images ({', '.join(IMAGE_SUFFIXES)})")
    records, problems = _caption_records(captions)
    refs = []
    for path in files:
        caption, line = records.pop(str(path.resolve()), (None, None))
        try:
            image, notes = read_image(path, size)
        except DataError as exc:
            problems.append(
                f"{path.name}{f' (captions line {line})' if line else ''}: {str(exc).split(': ', 1)[-1].split(' — fix')[0]}"
            )
            continue
        refs.append(Reference(str(path.relative_to(folder)), str(path), image, caption, notes, line))
    for _key, (_caption, line) in records.items():
        problems.append(f"line {line}: file_name is not an image in {folder}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise DataError(shown, path=captions or folder, fix="run `mmadapt data validate RECIPE` for the full list")
    return refs


def read_prompts(path: Path) -> list[Example]:
    """Eval prompts: JSONL of ``{"id"?, "prompt"}``; every bad line reported at once."""
    records, problems = _jsonl(path, "the eval prompts")
    examples, seen = [], set()
    for number, record in records:
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"line {number}: 'prompt' must be a non-empty string")
            continue
        ident = str(record.get("id") or f"eval-{number}")
        if ident in seen:
            problems.append(f"line {number}: duplicate id {ident}")
            continue
        seen.add(ident)
        examples.append(Example(ident, prompt.strip(), None, {k: v for k, v in record.items() if k not in ("id", "prompt")}))
    if problems:
        raise DataError("; ".join(problems[:10]), path=path, fix='each line is {"id": ..., "prompt": "..."}')
    if not examples:
        raise DataError("no prompts", path=path, fix='add lines {"id": ..., "prompt": "..."}')
    return examples
